"""Passive presentation-attack detection (liveness): is the face in front of the camera a live one?

A liveness model looks at one face *with its surroundings* - the detector's box
scaled about its centre (2.7x for MiniFASNetV2, 4.0x for MiniFASNetV1SE), so
paper edges, phone bezels, moire and glare are in view - resized to a small
square, and says how likely the face is real (a softmax over its classes, one
of which is "real"; MiniFASNet: 3 classes, class 1 = real).  An ensemble
averages its models' real-face probabilities, as the upstream project
(minivision-ai/Silent-Face-Anti-Spoofing) does.

How a model wants its input (crop scale, size, colour order, normalisation) and
which output class means "real" come from its bundle manifest (``kind:
"liveness"``, ``crop.scale``, ``input``, ``output``), so a new model needs a new
bundle, not new code.  A bundle's ``backend`` names the class that runs it
(:data:`LIVENESS_BACKENDS`, built-in ``tflite``; packages add theirs through
the ``edge.liveness`` entry-point group).  A missing, tampered or hand-edited
bundle raises (:class:`~edge.errors.ModelIntegrityError` for a sha256 or seal
mismatch): the caller must keep the door shut, never skip the check.

Runs on the device: numpy, OpenCV and the TFLite runtime only (imported when a
model is loaded, not at import time).
"""

from __future__ import annotations

import abc
import logging
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .bundle import Bundle, load_bundle
from .embedder import preprocess
from .errors import ConfigError, ModelError
from .registry import Registry
from .runtime import dequantise, load_interpreter, quantise

log = logging.getLogger(__name__)

KIND = "liveness"
Box = tuple[float, float, float, float]

LIVENESS_BACKENDS = Registry("liveness backend", "edge.liveness", {"tflite": "edge.liveness:TFLiteLiveness"})


# --------------------------------------------------------------------------- crop


def face_fraction(width: int, height: int, box: Box) -> float:
    """The share of the image the face box spans, the larger of its width and height shares.

    Its inverse is the largest scale :func:`crop_box` can keep: a face spanning half the image leaves room for
    a 2x crop, not for MiniFASNetV2's 2.7x.  The models judge paper edges, bezels and the scene around the
    face; when the face fills the image those are not in the crop (see ``liveness.max_face_fraction``).
    """
    _, _, box_w, box_h = (float(v) for v in box)
    if not (math.isfinite(box_w) and math.isfinite(box_h)) or box_w <= 0 or box_h <= 0:
        raise ValueError(f"face box {tuple(box)} has no area")
    if width < 2 or height < 2:
        raise ValueError(f"image of {width}x{height} pixels has nothing to crop")
    return max(box_w / (width - 1), box_h / (height - 1))


def crop_box(width: int, height: int, box: Box, scale: float) -> tuple[int, int, int, int]:
    """The crop's (left, top, right, bottom), inclusive, in a ``width`` x ``height`` image.

    Upstream's ``CropImage._get_new_box`` exactly: the box (x, y, w, h) scaled about its centre by
    ``scale``, the scale first reduced so the crop fits the image, then shifted back inside it where it
    runs over an edge; corners truncated to int.
    """
    x, y, box_w, box_h = (float(v) for v in box)
    scale = float(scale)
    if not all(math.isfinite(v) for v in (x, y, box_w, box_h, scale)):
        raise ValueError(f"face box {tuple(box)} or scale {scale} is not finite")
    if box_w <= 0 or box_h <= 0:
        raise ValueError(f"face box {tuple(box)} has no area")
    if scale <= 0:
        raise ValueError(f"crop scale {scale} must be positive")
    if width < 1 or height < 1:
        raise ValueError(f"image of {width}x{height} pixels has nothing to crop")
    scale = min((height - 1) / box_h, (width - 1) / box_w, scale)  # 1 / face_fraction
    new_w, new_h = box_w * scale, box_h * scale
    centre_x, centre_y = x + box_w / 2, y + box_h / 2
    left, top = centre_x - new_w / 2, centre_y - new_h / 2
    right, bottom = centre_x + new_w / 2, centre_y + new_h / 2
    if left < 0:
        right -= left
        left = 0
    if top < 0:
        bottom -= top
        top = 0
    if right > width - 1:
        left -= right - width + 1
        right = width - 1
    if bottom > height - 1:
        top -= bottom - height + 1
        bottom = height - 1
    return int(left), int(top), int(right), int(bottom)


def liveness_crop(image: np.ndarray, box: Box, scale: float, size: int = 80) -> np.ndarray:
    """The face ``box`` (x, y, w, h in image pixels) scaled by ``scale`` with its surroundings, as a
    ``size`` x ``size`` BGR uint8 crop (upstream ``CropImage.crop``: bilinear ``cv2.resize``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"liveness crops come from BGR colour images, not an array of shape {image.shape}")
    height, width = image.shape[:2]
    left, top, right, bottom = crop_box(width, height, box, scale)
    patch = image[top : bottom + 1, left : right + 1]
    crop = cv2.resize(patch, (int(size), int(size)))
    return crop if crop.dtype == np.uint8 else np.clip(crop, 0, 255).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- models


class LivenessModel(abc.ABC):
    """One verified liveness bundle: face boxes in, class probabilities (softmax) out.

    Build it with :meth:`from_bundle`, which runs the bundle with the backend its manifest names.
    """

    bundle: Bundle
    name: str
    model_id: str
    scale: float  # the face box is scaled by this about its centre (manifest ``crop.scale``)
    size: int  # square input side in pixels
    classes: int
    real_class: int

    def __init__(self, bundle: Bundle) -> None:
        if bundle.kind != KIND:
            raise ModelError(f"{bundle.root} is a {bundle.kind}, not a liveness model")
        manifest = bundle.manifest
        self.bundle = bundle
        self.name = bundle.name
        self.model_id = bundle.model_id
        crop = manifest.get("crop") or {}
        scale = crop.get("scale") if isinstance(crop, dict) else None
        if not _is_number(scale) or not (0 < scale <= 100):
            raise ModelError(f"liveness bundle {bundle.root}: crop.scale {scale!r} is not a positive box scale")
        self.scale = float(scale)
        spec = bundle.input_spec
        width, height = spec.get("width"), spec.get("height", spec.get("width"))
        if not isinstance(width, int) or width != height or width < 8:
            raise ModelError(f"liveness bundle {bundle.root}: input {width}x{height} is not a square crop size")
        self.size = int(width)
        output = manifest.get("output") or {}
        classes, real = output.get("classes"), output.get("real_class")
        if not (isinstance(classes, int) and isinstance(real, int) and classes >= 2 and 0 <= real < classes):
            raise ModelError(
                f"liveness bundle {bundle.root}: output {output!r} must give classes (>= 2) and real_class")
        self.classes, self.real_class = classes, real
        values = output.get("values", "logits")
        if values not in ("logits", "probabilities"):
            raise ModelError(f"liveness bundle {bundle.root}: output.values {values!r} is not logits or probabilities")
        self._softmax = values == "logits"

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, threads: int = 1, delegate: str | None = None) -> "LivenessModel":
        """The model of ``bundle`` (a verified :class:`Bundle` or its folder), run by its manifest's backend.

        Called on :class:`LivenessModel` itself, it picks the backend from :data:`LIVENESS_BACKENDS`;
        called on a backend class, it builds that backend.  ``delegate`` names an external TFLite delegate
        library (an accelerator); None or empty runs on the CPU (XNNPACK, ``threads`` threads).
        """
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, expect_kind=KIND)
        if cls is LivenessModel:
            backend = LIVENESS_BACKENDS.load(bundle.backend)
            if not (isinstance(backend, type) and issubclass(backend, LivenessModel)) or backend is LivenessModel:
                raise ConfigError(f"liveness backend {bundle.backend!r} is not a LivenessModel class")
            return backend.from_bundle(bundle, threads, delegate)
        return cls(bundle, threads=threads, delegate=delegate)

    @abc.abstractmethod
    def outputs(self, crops: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) BGR uint8 crops -> (N, classes) float32, as the model gives them."""

    def crops(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """This model's crops of ``boxes`` in ``image``: (N, size, size, 3) BGR uint8."""
        if len(boxes) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack([liveness_crop(image, box, self.scale, self.size) for box in boxes])

    def crop_probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Softmax class probabilities of ready-made crops (see :meth:`crops`): (N, classes)."""
        if len(crops) == 0:
            return np.zeros((0, self.classes), np.float32)
        values = np.asarray(self.outputs(np.asarray(crops)), np.float32).reshape(len(crops), -1)
        if values.shape[1] != self.classes:
            raise ModelError(f"{self.name}: {values.shape[1]} outputs but the manifest says {self.classes} classes")
        return softmax(values) if self._softmax else values

    def probabilities(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """Class probabilities of each face box (x, y, w, h) in the BGR ``image``: (N, classes)."""
        return self.crop_probabilities(self.crops(image, boxes))

    def real_scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """P(real) of each face box: (N,) float32."""
        return self.probabilities(image, boxes)[:, self.real_class]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TFLiteLiveness(LivenessModel):
    """A (full-INT8 or float) TFLite liveness model; quantises its input and dequantises its output itself.

    Crops run one at a time at batch 1: a door sees one or two faces, and resizing the interpreter
    whenever the face count changes would cost more than it saves.
    """

    def __init__(self, bundle: Bundle, threads: int = 1, delegate: str | None = None, runtime: str = "auto") -> None:
        super().__init__(bundle)
        self._spec = bundle.input_spec
        self._interpreter, self.runtime = load_interpreter(bundle.model_path, threads, runtime, delegate or "")
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in self._in["shape"])
        if len(shape) != 4 or shape[1:] != (self.size, self.size, 3):
            raise ModelError(
                f"{bundle.model_path}: input shape {shape} does not match the manifest "
                f"({self.size}x{self.size}x3 NHWC)"
            )
        if shape[0] != 1:
            self._interpreter.resize_tensor_input(self._in["index"], [1, self.size, self.size, 3], strict=False)
            self._interpreter.allocate_tensors()
            self._in = self._interpreter.get_input_details()[0]
            self._out = self._interpreter.get_output_details()[0]
        produced = int(np.prod(self._out["shape"][1:]))
        if produced != self.classes:
            raise ModelError(f"{bundle.model_path}: {produced} outputs but the manifest says {self.classes} classes")

    def _quantise(self, batch: np.ndarray) -> np.ndarray:
        return quantise(self._in, batch)

    def _dequantise(self, output: np.ndarray) -> np.ndarray:
        return dequantise(self._out, output)

    def outputs(self, crops: np.ndarray) -> np.ndarray:
        batch = self._quantise(preprocess(crops, self._spec))
        rows = []
        for i in range(len(batch)):
            self._interpreter.set_tensor(self._in["index"], batch[i : i + 1])
            self._interpreter.invoke()
            rows.append(self._dequantise(self._interpreter.get_tensor(self._out["index"])).reshape(-1))
        return np.stack(rows)


class LivenessEnsemble:
    """Several liveness models judged together: the mean of their real-face probabilities (upstream's rule)."""

    def __init__(self, models: Sequence[LivenessModel]) -> None:
        if not models:
            raise ConfigError("a liveness ensemble needs at least one model")
        self.models = tuple(models)

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    def model_scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """P(real) of each face box by each model: (N, models)."""
        if len(boxes) == 0:
            return np.zeros((0, len(self.models)), np.float32)
        return np.stack([model.real_scores(image, boxes) for model in self.models], axis=1)

    def scores(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """The averaged P(real) of each face box (x, y, w, h) in the BGR ``image``: (N,) float32."""
        return self.model_scores(image, boxes).mean(axis=1).astype(np.float32)


def load_liveness(paths: Sequence[str | Path], threads: int = 1, delegate: str | None = None) -> LivenessEnsemble:
    """Load and verify every liveness bundle in ``paths`` (fail closed: any bad bundle raises)."""
    paths = list(paths)
    if not paths:
        raise ConfigError("no liveness bundles given")
    models = [LivenessModel.from_bundle(load_bundle(path, expect_kind=KIND), threads, delegate) for path in paths]
    log.debug("liveness ensemble: %s", ", ".join(f"{m.name} (x{m.scale:g})" for m in models))
    return LivenessEnsemble(models)
