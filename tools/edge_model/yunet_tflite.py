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

Each quantisation is written as a sealed detector bundle whose manifest names
the ``tflite-yunet`` backend, so a door unit can select it; the decoder that
runs it is the runtime's :class:`edge.detect.YuNetTFLiteDetector` (re-exported
here for the tool's comparisons).
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

from edge.bundle import sha256_file, write_manifest
from edge.detect import DIVISOR, OUTPUT_NAMES, STRIDES, YuNetTFLiteDetector, pad_frame, padded_size
from edge.errors import EdgeError, ModelError
from edge.images import load_image

__all__ = ["DIVISOR", "LORES_SIZE", "OUTPUT_NAMES", "STRIDES", "YuNetTFLiteDetector", "convert_yunet",
           "fixed_size_onnx", "frames_from", "lores_frame", "pad_frame", "padded_size", "write_yunet_bundle"]

log = logging.getLogger(__name__)

LORES_SIZE = (320, 240)  # (width, height) of the runtime's lores stream


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
    """Convert to TFLite at the padded lores size.

    Writes one bundle folder ``yunet-<quant>-<w>x<h>/`` per quantisation (the ``.tflite`` and a sealed
    manifest naming the ``tflite-yunet`` backend) and ``conversion.json``; the record's ``files`` are
    the ``.tflite`` paths, its ``bundles`` the folders.
    """
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
                              "calibration_images": used, "files": {}, "bundles": {}}
    try:
        fixed = work / "yunet_fixed.onnx"
        onnx.save(fixed_size_onnx(Path(onnx_path), width, height), str(fixed))
        source = inspect_source(fixed)
        saved_model, _dynamic = onnx_to_saved_model(source, work, array[:8])
        record["converter"] = _converter_versions("onnx")
        for quant in quants:
            tflite = quantise(lambda: make_converter(source, saved_model), quant, calib if quant == "int8" else None,
                              progress)
            name = f"yunet-{quant}-{width}x{height}"
            bundle = out_dir / name
            bundle.mkdir(parents=True, exist_ok=True)
            path = bundle / f"{name}.tflite"
            path.write_bytes(tflite)
            write_yunet_bundle(bundle, path.name, quant, Path(onnx_path), (width, height),
                               calib.info if quant == "int8" else None, record["converter"])
            record["files"][quant] = str(path)
            record["bundles"][quant] = str(bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def write_yunet_bundle(root: Path, file: str, quant: str, source: Path, size: tuple[int, int],
                       calibration: dict | None = None, converter: dict | None = None) -> Path:
    """Seal ``root/file`` (a converted YuNet) as a detector bundle run by the ``tflite-yunet`` backend."""
    width, height = size
    manifest: dict[str, Any] = {
        "name": Path(file).stem, "version": "2023mar", "kind": "detector", "file": file, "licence": "MIT",
        "backend": "tflite-yunet", "runtime": "tflite (ai-edge-litert or tflite-runtime)",
        "input": {"width": width, "height": height, "channels": 3, "layout": "NHWC", "color": "BGR",
                  "dtype": "int8" if quant == "int8" else "float32",
                  "padding": "smaller frames zero-padded bottom/right, as cv2.FaceDetectorYN pads them"},
        "outputs": "cls/obj/bbox/kps at strides 8, 16, 32 (decoded by edge.detect.YuNetTFLiteDetector)",
        "quantisation": {"type": quant, **({"converter": converter} if converter else {})},
        "source_model": {"file": source.name, "sha256": sha256_file(source),
                         "origin": "OpenCV Zoo, models/face_detection_yunet (Shiqi Yu et al.)", "licence": "MIT"},
    }
    if calibration is not None:
        manifest["calibration"] = calibration
    return write_manifest(root, manifest)
