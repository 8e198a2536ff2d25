"""Face embedders behind one small API; the TFLite backend runs full-INT8 models.

An embedder takes aligned BGR uint8 crops (see :mod:`edge.align`) and returns
L2-normalised float32 embeddings, one row per crop.  How a model wants its
input (size, colour order, normalisation) comes from its bundle manifest, so a
new model needs a new bundle, not new code.
"""

from __future__ import annotations

import abc
import logging
from typing import Sequence

import cv2
import numpy as np

from .bundle import Bundle
from .errors import ModelError
from .runtime import load_interpreter

log = logging.getLogger(__name__)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Embedder(abc.ABC):
    """Turns aligned face crops into L2-normalised embeddings.

    A backend is chosen by its bundle's manifest (``backend``, see :data:`edge.app.EMBEDDERS`)
    and built once at start-up with :meth:`from_config`.
    """

    bundle: Bundle
    model_id: str
    legacy_model_id: str | None = None  # what galleries enrolled before manifest sealing recorded
    embedding_size: int
    input_size: int

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "Embedder":
        """Build the backend for ``bundle`` with the settings of ``config.embedder``.

        Backends the model tool builds directly (its float ONNX reference) do not override it.
        """
        raise ModelError(f"{cls.__name__} is a model-tool backend; a device bundle cannot select it")

    @abc.abstractmethod
    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, H, W, 3) or a list of BGR uint8 crops -> (N, D) float32, unit L2 norm."""

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        return self.embed([crop])[0]


def preprocess(crops: Sequence[np.ndarray] | np.ndarray, spec: dict) -> np.ndarray:
    """BGR uint8 crops -> float32 NHWC batch normalised as the manifest's ``input`` says.

    ``float = (pixel - mean) / std`` per channel, after reordering to ``color``.
    Shared with the model tool, so calibration data is prepared identically.
    """
    size = int(spec.get("width", 112))
    batch = []
    for crop in crops:
        if crop.shape[0] != size or crop.shape[1] != size:
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        batch.append(crop)
    array = np.stack(batch).astype(np.float32)
    if spec.get("color", "RGB").upper() == "RGB":
        array = array[..., ::-1]
    mean = np.asarray(spec.get("mean", 0.0), dtype=np.float32)
    std = np.asarray(spec.get("std", 1.0), dtype=np.float32)
    return np.ascontiguousarray((array - mean) / std)


class TFLiteEmbedder(Embedder):
    """A (full-INT8 or float) TFLite embedder; quantises input and dequantises output itself."""

    def __init__(self, bundle: Bundle, threads: int = 2, runtime: str = "auto", delegate: str = "") -> None:
        if bundle.kind != "embedder":
            raise ModelError(f"{bundle.root} is a {bundle.kind}, not an embedder")
        self.bundle = bundle
        self.model_id = bundle.model_id
        self.legacy_model_id = bundle.legacy_model_id
        self._spec = bundle.input_spec
        self.input_size = int(self._spec.get("width", 112))
        self._interpreter, self.runtime = load_interpreter(bundle.model_path, threads, runtime, delegate)
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        shape = tuple(self._in["shape"])
        if len(shape) != 4 or shape[1:] != (self.input_size, self.input_size, 3):
            raise ModelError(
                f"{bundle.model_path}: input shape {shape} does not match the manifest "
                f"({self.input_size}x{self.input_size}x3 NHWC)"
            )
        self.embedding_size = int(self._out["shape"][-1])
        declared = bundle.embedding_size
        if declared is not None and int(declared) != self.embedding_size:
            raise ModelError(
                f"{bundle.model_path}: output size {self.embedding_size} but manifest says {declared}"
            )
        self._batch = int(shape[0])

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "TFLiteEmbedder":
        e = config.embedder
        return cls(bundle, e.threads, e.runtime, e.delegate)

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        self._interpreter.resize_tensor_input(
            self._in["index"], [batch, self.input_size, self.input_size, 3], strict=False
        )
        self._interpreter.allocate_tensors()
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        self._batch = batch

    def _quantise(self, batch: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype == np.float32:
            return batch
        scale, zero_point = self._in["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(dtype)

    def _dequantise(self, output: np.ndarray) -> np.ndarray:
        if output.dtype == np.float32:
            return output
        scale, zero_point = self._out["quantization"]
        return (output.astype(np.float32) - zero_point) * scale

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        batch = self._quantise(preprocess(crops, self._spec))
        self._resize(batch.shape[0])
        self._interpreter.set_tensor(self._in["index"], batch)
        self._interpreter.invoke()
        output = self._dequantise(self._interpreter.get_tensor(self._out["index"]))
        return l2_normalise(output.reshape(batch.shape[0], -1))
