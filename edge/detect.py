"""Face detection behind a small abstract API; YuNet through ``cv2.FaceDetectorYN`` or TFLite.

The detector runs on the lores image and returns faces in main-image
coordinates, so the aligner crops from full resolution.  The manifest's
``backend`` names the class (:data:`edge.app.DETECTORS`): ``opencv-yunet``
(:class:`YuNetDetector`, the ONNX through OpenCV) or ``tflite-yunet``
(:class:`YuNetTFLiteDetector`, YuNet converted to a fixed-size TFLite model by
``edge_model.yunet_tflite``).
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path

import cv2
import numpy as np

from .bundle import Bundle
from .errors import ModelError
from .runtime import load_interpreter, quantise
from .types import Face, Frame

log = logging.getLogger(__name__)


class Detector(abc.ABC):
    """Finds faces; one instance is built at start-up and reused for every frame.

    ``min_face_size`` is in the pixels of the image faces are cropped from
    (``frame.main``): on a lores image it is scaled down accordingly.
    """

    bundle: Bundle
    min_face_size: float = 0

    @classmethod
    @abc.abstractmethod
    def from_config(cls, bundle: Bundle, config) -> "Detector":
        """Build the backend for ``bundle`` with the settings of ``config.detector`` (see :data:`edge.app.DETECTORS`)."""

    @abc.abstractmethod
    def detect_image(self, image: np.ndarray, min_size: float | None = None) -> list[Face]:
        """Faces in ``image`` coordinates, best score first, no smaller than ``min_size``
        (default ``min_face_size``) pixels of ``image``."""

    def detect(self, frame: Frame) -> list[Face]:
        """Detect on ``frame.lores`` and map the result to ``frame.main`` coordinates."""
        s = frame.lores_scale
        faces = self.detect_image(frame.lores, self.min_face_size / s)
        if s == 1.0:
            return faces
        return [
            Face(
                box=tuple(v * s for v in face.box),
                score=face.score,
                landmarks=(face.landmarks * s).astype(np.float32),
            )
            for face in faces
        ]


class YuNetDetector(Detector):
    """YuNet (MIT) via OpenCV's FaceDetectorYN, with minimum size and score filters."""

    def __init__(
        self,
        bundle: Bundle,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        min_face_size: int = 40,
        top_k: int = 50,
    ) -> None:
        self.bundle = bundle
        self.score_threshold = score_threshold
        self.min_face_size = min_face_size
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(bundle.model_path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as exc:
            raise ModelError(f"detector {bundle.model_path} could not be loaded: {exc}") from exc
        self._input_size = (320, 320)

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "YuNetDetector":
        d = config.detector
        return cls(bundle, d.score_threshold, d.nms_threshold, d.min_face_size)

    def detect_image(self, image: np.ndarray, min_size: float | None = None) -> list[Face]:
        min_size = self.min_face_size if min_size is None else min_size
        height, width = image.shape[:2]
        if (width, height) != self._input_size:
            self._net.setInputSize((width, height))
            self._input_size = (width, height)
        _, raw = self._net.detect(image)
        if raw is None:
            return []
        faces = []
        for row in raw:
            x, y, w, h = (float(v) for v in row[:4])
            score = float(row[14])
            if score < self.score_threshold or min(w, h) < min_size:
                continue
            faces.append(
                Face(box=(x, y, w, h), score=score, landmarks=row[4:14].reshape(5, 2).astype(np.float32))
            )
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


# --------------------------------------------------------------------------- YuNet as fixed-size TFLite

DIVISOR = 32  # YuNet's coarsest stride: FaceDetectorYN pads frames to a multiple of it
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


class YuNetTFLiteDetector(Detector):
    """YuNet from a fixed-size TFLite file (int8 or float); same filters as :class:`YuNetDetector`.

    The 12 outputs (cls/obj/bbox/kps at strides 8, 16, 32, found by their ONNX names in the model's
    signature) are decoded as OpenCV's ``face_detect.cpp`` does: score = sqrt(cls * obj),
    anchor-free box and landmark offsets per grid cell, then ``cv2.dnn.NMSBoxes``.  A frame smaller
    than the model input is zero-padded at the bottom/right exactly as FaceDetectorYN pads it, so
    both run the same network on the same pixels; a larger one is scaled down to fit (aspect kept)
    and its faces scaled back.
    """

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
        if isinstance(model, Bundle):
            if model.kind != "detector":
                raise ModelError(f"{model.root} is a {model.kind}, not a detector")
            self.bundle = model
        path = model.model_path if isinstance(model, Bundle) else Path(model)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_size = min_face_size
        self.top_k = top_k
        self._interpreter, self.runtime = load_interpreter(path, threads, runtime)
        self._in = self._interpreter.get_input_details()[0]
        shape = tuple(int(v) for v in self._in["shape"])
        if len(shape) != 4 or shape[3] != 3 or shape[1] % DIVISOR or shape[2] % DIVISOR:
            raise ModelError(f"{path}: input {shape} is not a YuNet NHWC input with sides divisible by {DIVISOR}")
        _, self.height, self.width, _ = shape
        self._outputs = self._map_outputs(path)
        self._grids = {}
        for s in STRIDES:
            rows, cols = self.height // s, self.width // s
            r, c = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
            self._grids[s] = (c, r)

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "YuNetTFLiteDetector":
        """The ``[detector]`` filters; the TFLite runtime is ``embedder.runtime`` (one runtime per process)."""
        d = config.detector
        detector = cls(bundle, d.score_threshold, d.nms_threshold, d.min_face_size, runtime=config.embedder.runtime)
        c = config.camera
        lores = (c.lores_width, round(c.height * c.lores_width / c.width))
        if lores[0] > detector.width or lores[1] > detector.height:
            log.warning("detector %s takes %dx%d frames; the %dx%d lores frames are scaled down to fit",
                        bundle.root, detector.width, detector.height, *lores)
        return detector

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
        return quantise(self._in, frame[None].astype(np.float32))

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
        h, w = image.shape[:2]
        fit = min(self.width / w, self.height / h)
        if fit < 1.0:  # larger than the fixed input: scale down to fit, then map the faces back
            size = (min(self.width, round(w * fit)), min(self.height, round(h * fit)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            rows = self.raw(small)
            rows[:, 0:14:2] *= w / size[0]  # x, w and the landmarks' x
            rows[:, 1:14:2] *= h / size[1]  # y, h and the landmarks' y
        else:
            rows = self.raw(image)
        faces = []
        for row in rows:
            x, y, bw, bh = (float(v) for v in row[:4])
            if min(bw, bh) < min_size:
                continue
            faces.append(Face(box=(x, y, bw, bh), score=float(row[14]),
                              landmarks=row[4:14].reshape(5, 2).astype(np.float32)))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces
