"""YuNet 2023mar as a fixed-size TFLite model: conversion, lores-frame calibration, decoder.

``edge-model convert`` cannot do this one alone: the shipped ONNX has a fixed
1x3x640x640 input (OpenCV's ``FaceDetectorYN.setInputSize`` reshapes the net at
run time, TFLite cannot), and its detector calibration resizes whole images to
the model input instead of making lores-like frames.  This module adds only
that: it rewrites the ONNX input to the lores size padded to a multiple of 32,
builds calibration frames the way the camera makes lores frames, and then uses
``edge_model.convert``'s own onnx2tf translation and TFLite quantiser.

Input size: the lores stream is 320x240; YuNet's stride-32 head and its FPN
upsampling need sides divisible by 32, so the model takes **320x256** and the
frame is zero-padded at the bottom by 16 rows.  That is exactly what
``cv2.FaceDetectorYN`` does with a 320x240 frame (``copyMakeBorder`` to the
next multiple of 32, bottom/right, zeros), so the two run the same network on
the same pixels and their outputs are directly comparable; resizing to 320x256
instead would change the aspect ratio, and 320x224 would crop the frame.

:class:`YuNetTFLiteDetector` decodes the 12 outputs (cls/obj/bbox/kps at
strides 8, 16, 32) as OpenCV's ``face_detect.cpp`` does (score =
sqrt(cls * obj), anchor-free box and landmark offsets per grid cell) and runs
``cv2.dnn.NMSBoxes``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.bundle import Bundle
from edge.detect import Detector
from edge.errors import EdgeError, ModelError
from edge.images import load_image
from edge.runtime import load_interpreter
from edge.types import Face

log = logging.getLogger(__name__)

LORES_SIZE = (320, 240)  # (width, height) of the runtime's lores stream
DIVISOR = 32
STRIDES = (8, 16, 32)
OUTPUT_NAMES = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)


def padded_size(width: int, height: int, divisor: int = DIVISOR) -> tuple[int, int]:
    """The size FaceDetectorYN pads a frame to: each side up to the next multiple of ``divisor``."""
    return ((width - 1) // divisor + 1) * divisor, ((height - 1) // divisor + 1) * divisor


def pad_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``image`` at the bottom/right to ``size`` (w, h), as face_detect.cpp does."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    if w > size[0] or h > size[1]:
        raise ValueError(f"frame {w}x{h} is larger than the model input {size[0]}x{size[1]}")
    return cv2.copyMakeBorder(image, 0, size[1] - h, 0, size[0] - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def lores_frame(image: np.ndarray, rng: random.Random | None = None, size: tuple[int, int] = LORES_SIZE,
                min_fill: float = 0.45) -> np.ndarray:
    """Place a face photo in a black ``size`` frame like a lores camera frame.

    Aspect-preserving resize to a random fraction (``min_fill``..1) of the
    largest fit, at a random position (``rng``); centred at full fit when
    ``rng`` is None.  Gives the face sizes a door camera sees (~50-200 px).
    """
    w, h = size
    ih, iw = image.shape[:2]
    fit = min(w / iw, h / ih)
    scale = fit * (rng.uniform(min_fill, 1.0) if rng else 1.0)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    x = rng.randint(0, w - nw) if rng else (w - nw) // 2
    y = rng.randint(0, h - nh) if rng else (h - nh) // 2
    frame = np.zeros((h, w, 3), np.uint8)
    frame[y : y + nh, x : x + nw] = small
    return frame


def frames_from(paths: list[Path], seed: int) -> tuple[np.ndarray, list[str]]:
    """Lores-like frames (N, 240, 320, 3) uint8 BGR from image files; unreadable files are skipped."""
    rng = random.Random(seed)
    frames, used = [], []
    for path in paths:
        try:
            frames.append(lores_frame(load_image(path), rng))
            used.append(str(path))
        except EdgeError as exc:
            log.warning("%s", exc)
    return (np.stack(frames) if frames else np.zeros((0, LORES_SIZE[1], LORES_SIZE[0], 3), np.uint8)), used


# --------------------------------------------------------------------------- conversion


def fixed_size_onnx(onnx_path: Path, width: int, height: int):
    """The YuNet ONNX with its input set to 1x3xHxW and output shapes left to inference."""
    import onnx

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = height, width
    cells = {s: (height // s) * (width // s) for s in STRIDES}
    for out in model.graph.output:
        stride = int(out.name.rsplit("_", 1)[1])
        out.type.tensor_type.shape.dim[1].dim_value = cells[stride]
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def convert_yunet(
    onnx_path: Path,
    out_dir: Path,
    calib_roots: list[Path],
    quants: tuple[str, ...] = ("int8", "fp32"),
    calib_count: int = 200,
    seed: int = 0,
    size: tuple[int, int] = LORES_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert to TFLite at the padded lores size; writes ``yunet-<quant>-<w>x<h>.tflite`` + a JSON record."""
    import onnx

    from .convert import (
        Calibration,
        _converter_versions,
        array_sha256,
        inspect_source,
        make_converter,
        onnx_to_saved_model,
        quantise,
    )
    from .crops import select_images

    width, height = padded_size(*size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = select_images(list(calib_roots), calib_count, seed)
    frames, used = frames_from([p for p, _ in items], seed)
    if not len(frames):
        raise ModelError(f"no calibration images under {', '.join(map(str, calib_roots))}")
    array = np.stack([pad_frame(f, (width, height)) for f in frames]).astype(np.float32)  # BGR 0..255 NHWC
    calib = Calibration(array, {
        "count": len(array), "seed": int(seed), "source": [str(r) for r in calib_roots],
        "pipeline": f"edge_model.yunet_tflite.lores_frame ({size[0]}x{size[1]}, random scale/position) "
                    f"-> zero pad bottom/right to {width}x{height}; BGR 0..255 float",
        "sha256": array_sha256(array),
    })
    work = Path(tempfile.mkdtemp(prefix="yunet-tflite-"))
    record: dict[str, Any] = {"source": str(onnx_path), "input": [1, height, width, 3], "calibration": calib.info,
                              "calibration_images": used, "files": {}}
    try:
        fixed = work / "yunet_fixed.onnx"
        onnx.save(fixed_size_onnx(Path(onnx_path), width, height), str(fixed))
        source = inspect_source(fixed)
        saved_model, _dynamic = onnx_to_saved_model(source, work, array[:8])
        for quant in quants:
            tflite = quantise(lambda: make_converter(source, saved_model), quant, calib if quant == "int8" else None,
                              progress)
            path = out_dir / f"yunet-{quant}-{width}x{height}.tflite"
            path.write_bytes(tflite)
            record["files"][quant] = str(path)
        record["converter"] = _converter_versions("onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


# --------------------------------------------------------------------------- decoder / detector


class YuNetTFLiteDetector(Detector):
    """YuNet from a fixed-size TFLite file (int8 or float); same filters as :class:`edge.detect.YuNetDetector`."""

    def __init__(
        self,
        model: Bundle | str | Path,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        min_face_size: int = 40,
        top_k: int = 50,
        threads: int = 1,
        runtime: str = "auto",
    ) -> None:
        path = model.model_path if isinstance(model, Bundle) else Path(model)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_size = min_face_size
        self.top_k = top_k
        self._interpreter, self.runtime = load_interpreter(path, threads, runtime)
        self._in = self._interpreter.get_input_details()[0]
        _, self.height, self.width, channels = (int(v) for v in self._in["shape"])
        if channels != 3 or self.width % DIVISOR or self.height % DIVISOR:
            raise ModelError(f"{path}: input {tuple(self._in['shape'])} is not a YuNet NHWC input")
        self._outputs = self._map_outputs(path)
        self._grids = {}
        for s in STRIDES:
            rows, cols = self.height // s, self.width // s
            r, c = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
            self._grids[s] = (c, r)

    def _map_outputs(self, path: Path) -> dict[str, dict]:
        """Output details by ONNX name (cls_8 ... kps_32), from the model's signature."""
        details = {d["index"]: d for d in self._interpreter.get_output_details()}
        signatures = self._interpreter.get_signature_list()
        mapping: dict[str, dict] = {}
        if signatures:
            runner_outputs = self._interpreter._get_full_signature_list()[next(iter(signatures))]["outputs"]
            for name, index in runner_outputs.items():
                key = next((n for n in OUTPUT_NAMES if name == n or name.endswith(n)), None)
                if key:
                    mapping[key] = details[index]
        missing = [n for n in OUTPUT_NAMES if n not in mapping]
        if missing:
            raise ModelError(f"{path}: outputs {', '.join(missing)} not found in the model signature")
        return mapping

    def _quantise(self, frame: np.ndarray) -> np.ndarray:
        batch = frame[None].astype(np.float32)
        if self._in["dtype"] == np.float32:
            return batch
        scale, zero = self._in["quantization"]
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.round(batch / scale + zero), info.min, info.max).astype(self._in["dtype"])

    def _output(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Output ``name`` as float (cells, channels), optionally only ``rows`` (dequantised after the gather)."""
        detail = self._outputs[name]
        value = self._interpreter.get_tensor(detail["index"])[0]
        value = value.reshape(-1, value.shape[-1]) if value.ndim > 1 else value.reshape(-1, 1)
        if rows is not None:
            value = value[rows]
        if value.dtype != np.float32:
            scale, zero = detail["quantization"]
            value = (value.astype(np.float32) - zero) * scale
        return value

    def raw(self, image: np.ndarray) -> np.ndarray:
        """FaceDetectorYN-style rows (x, y, w, h, 10 landmark coords, score) after NMS, unfiltered by size."""
        h, w = image.shape[:2]
        if w > self.width or h > self.height:
            raise ModelError(f"frame {w}x{h} is larger than the detector input {self.width}x{self.height}")
        self._interpreter.set_tensor(self._in["index"], self._quantise(pad_frame(image, (self.width, self.height))))
        self._interpreter.invoke()
        boxes, scores, kps_all = [], [], []
        for s in STRIDES:
            cls = np.clip(self._output(f"cls_{s}")[:, 0], 0.0, 1.0)
            obj = np.clip(self._output(f"obj_{s}")[:, 0], 0.0, 1.0)
            score = np.sqrt(cls * obj)
            keep = np.nonzero(score >= self.score_threshold)[0]
            if not len(keep):
                continue
            c, r = self._grids[s][0][keep], self._grids[s][1][keep]
            bbox = self._output(f"bbox_{s}", keep)
            kps = self._output(f"kps_{s}", keep).reshape(-1, 5, 2)
            cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
            bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            kps_all.append(np.stack([(kps[..., 0] + c[:, None]) * s, (kps[..., 1] + r[:, None]) * s], axis=2))
            scores.append(score[keep])
        if not boxes:
            return np.zeros((0, 15), np.float32)
        boxes_a, scores_a = np.concatenate(boxes), np.concatenate(scores)
        kps_a = np.concatenate(kps_all).reshape(-1, 10)
        keep = cv2.dnn.NMSBoxes(boxes_a.tolist(), scores_a.tolist(), self.score_threshold, self.nms_threshold,
                                1.0, self.top_k)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        return np.concatenate([boxes_a[keep], kps_a[keep], scores_a[keep, None]], axis=1).astype(np.float32)

    def detect_image(self, image: np.ndarray, min_size: float | None = None) -> list[Face]:
        min_size = self.min_face_size if min_size is None else min_size
        faces = []
        for row in self.raw(image):
            x, y, w, h = (float(v) for v in row[:4])
            if min(w, h) < min_size:
                continue
            faces.append(Face(box=(x, y, w, h), score=float(row[14]),
                              landmarks=row[4:14].reshape(5, 2).astype(np.float32)))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces
