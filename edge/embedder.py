"""Face embedders behind one small API.

An embedder takes aligned BGR uint8 crops (see :mod:`edge.align`) and returns
L2-normalised float32 embeddings, one row per crop.  How a model wants its
input (size, colour order, normalisation) comes from its bundle manifest, so a
new model needs a new bundle, not new code.  The manifest's ``backend`` names
the class that runs it (:data:`edge.app.EMBEDDERS`): ``tflite``
(:class:`TFLiteEmbedder`, full-INT8 or float), ``opencv-dnn``
(:class:`OnnxEmbedder`, a float ONNX through OpenCV) and ``onnxruntime``
(:class:`OnnxRuntimeEmbedder`, the same through the optional onnxruntime).
"""

from __future__ import annotations

import abc
import importlib
import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .bundle import Bundle, sha256_file
from .errors import ConfigError, ModelError, ModelFormatError
from .runtime import dequantise, load_interpreter, quantise

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

    runtime: str  # what runs the model, for the start-up log and reports

    @classmethod
    @abc.abstractmethod
    def from_config(cls, bundle: Bundle, config) -> "Embedder":
        """Build the backend for ``bundle`` with the settings of ``config.embedder``."""

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
    """A (full-INT8 or float) TFLite embedder; quantises input and dequantises output itself.

    A graph with a dynamic batch (``shape_signature`` -1) is resized to each call's batch; one whose
    batch is fixed (shapes folded at batch 1, e.g. EdgeFace) is run that many crops at a time, since
    resizing it would break its constant reshapes.
    """

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
        signature = self._in.get("shape_signature")
        self._fixed_batch = int(shape[0]) if signature is not None and len(signature) and signature[0] > 0 else None

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
        return quantise(self._in, batch)

    def _dequantise(self, output: np.ndarray) -> np.ndarray:
        return dequantise(self._out, output)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        batch = self._quantise(preprocess(crops, self._spec))
        if self._fixed_batch is None:
            return l2_normalise(self._invoke(batch))
        step = self._fixed_batch
        rows = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            if len(chunk) < step:  # pad the last chunk of a fixed-batch graph
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            rows.append(self._invoke(chunk))
        return l2_normalise(np.concatenate(rows)[: len(batch)])

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        """One invoke on a quantised NHWC batch -> raw (N, D) float outputs."""
        self._resize(batch.shape[0])
        self._interpreter.set_tensor(self._in["index"], batch)
        self._interpreter.invoke()
        output = self._dequantise(self._interpreter.get_tensor(self._out["index"]))
        return output.reshape(batch.shape[0], -1)


def _require_module(module: str, backend: str, install: str):
    """Import an optional backend's module, or fail closed as :meth:`edge.registry.Registry.load` does.

    Only ``module`` itself missing is "not installed" (a ConfigError that names it and how to install
    it: a door whose bundle names this backend does not start without it); an installed module that
    fails inside raises as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(
            f"embedder backend {backend!r} needs the module {module!r}, which is not installed; "
            f"install it with {install}"
        ) from None


# What OpenCV's FaceRecognizerSF feeds SFace: RGB 0..255 NCHW, no mean or scale. A bare .onnx file the
# model tool opens has no manifest, so it is fed this.
SFACE_INPUT = {"width": 112, "height": 112, "channels": 3, "layout": "NCHW", "color": "RGB",
               "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "dtype": "float32"}


class OnnxEmbedder(Embedder):
    """A float ONNX embedder through OpenCV's DNN module (backend ``opencv-dnn``: no extra dependency).

    The input is prepared by :func:`preprocess` from the manifest's ``input`` spec (``layout`` NCHW
    unless it says NHWC), like every other backend's.  ``model`` is a bundle, or a bare ``.onnx``
    file for the model tool's float reference, which gets ``input_spec`` (default
    :data:`SFACE_INPUT`, OpenCV's ``FaceRecognizerSF`` preprocessing) and a model id from the file.
    """

    engine = "opencv-dnn"

    def __init__(self, model: Bundle | str | Path, threads: int = 2, input_spec: dict | None = None) -> None:
        if isinstance(model, Bundle):
            if model.kind != "embedder":
                raise ModelError(f"{model.root} is a {model.kind}, not an embedder")
            self.bundle = model
            self.path = model.model_path
            self.sha256 = model.sha256
            self.model_id, self.legacy_model_id = model.model_id, model.legacy_model_id
            self._spec = input_spec or model.input_spec or SFACE_INPUT
            declared = model.embedding_size
        else:
            self.bundle = None
            self.path = Path(model)
            self.sha256 = sha256_file(self.path)
            self.model_id = f"{self.path.stem}:{self.sha256[:16]}"
            self._spec = input_spec or SFACE_INPUT
            declared = None
        self._threads = threads
        self.input_size = int(self._spec.get("width", 112))
        self._nchw = str(self._spec.get("layout", "NCHW")).upper() != "NHWC"
        self._open()
        probe = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
        self.embedding_size = int(self._forward(preprocess(probe, self._spec)).shape[1])
        if declared is not None and int(declared) != self.embedding_size:
            raise ModelError(f"{self.path}: output size {self.embedding_size} but manifest says {declared}")

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "OnnxEmbedder":
        e = config.embedder
        if e.delegate:
            log.warning("embedder.delegate %r is a TFLite delegate; the %s backend of %s runs without it",
                        e.delegate, cls.engine, bundle.root)
        return cls(bundle, e.threads)

    def _open(self) -> None:
        try:
            self._net = cv2.dnn.readNetFromONNX(str(self.path))
        except cv2.error as exc:
            raise ModelFormatError(f"{self.path}: OpenCV cannot load this ONNX model: {exc}") from exc
        self.runtime = f"opencv-dnn {cv2.__version__}"

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Float NHWC batch (already preprocessed) -> raw (N, D) outputs."""
        blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if self._nchw else batch
        previous = cv2.getNumThreads()
        cv2.setNumThreads(self._threads)
        try:
            self._net.setInput(blob)
            out = self._net.forward()
        finally:
            cv2.setNumThreads(previous)
        return out.reshape(blob.shape[0], -1)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return l2_normalise(self._forward(preprocess(crops, self._spec)))


class OnnxRuntimeEmbedder(OnnxEmbedder):
    """A float ONNX embedder through onnxruntime (backend ``onnxruntime``, the optional ``onnx`` extra).

    onnxruntime is not a device dependency: it is imported when the backend is built, and a bundle
    naming this backend on a unit without it stops start-up with a ConfigError saying what to install.
    A model with a fixed batch size is run that many crops at a time.
    """

    engine = "onnxruntime"
    INSTALL = "pip install 'onnxruntime>=1.17' (the edge-door extra: pip install '.[onnx]')"

    def _open(self) -> None:
        ort = _require_module("onnxruntime", self.engine, self.INSTALL)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: exported models warn about initializers per tensor
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ModelFormatError(f"{self.path}: onnxruntime cannot load this ONNX model: {exc}") from exc
        (inp,) = self._session.get_inputs()
        self._input_name = inp.name
        batch = inp.shape[0] if inp.shape else None
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.runtime = f"onnxruntime {ort.__version__}"

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if self._nchw else batch
        step = self._fixed_batch or len(blob)
        outputs = []
        for start in range(0, len(blob), step):
            chunk = blob[start : start + step]
            if len(chunk) < step:  # pad the last chunk of a fixed-batch model
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out = self._session.run(None, {self._input_name: chunk.astype(np.float32, copy=False)})[0]
            outputs.append(out.reshape(step, -1))
        return np.concatenate(outputs)[: len(blob)]
