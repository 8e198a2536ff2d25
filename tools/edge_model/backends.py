"""Open any embedder the model tools evaluate: a bundle (the device's TFLite) or a float ONNX reference.

Both give an :class:`edge.embedder.Embedder`, so evaluation and tuning run the
same code on the float model and on the INT8 bundle that ships to the device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.bundle import MANIFEST_NAME, load_bundle, sha256_file
from edge.embedder import Embedder, TFLiteEmbedder, l2_normalise
from edge.errors import ModelError

log = logging.getLogger(__name__)


class OnnxEmbedder(Embedder):
    """Float reference embedder through OpenCV's DNN module.

    Preprocessing is OpenCV's ``FaceRecognizerSF``: RGB, 0..255, NCHW 1x3x112x112,
    no mean or scale (``blobFromImage(img, 1, (112, 112), 0, swapRB=True)``).
    Output rows are L2-normalised like every other embedder's.
    """

    def __init__(self, path: Path, threads: int = 2, input_size: int = 112) -> None:
        self.path = Path(path)
        try:
            self._net = cv2.dnn.readNetFromONNX(str(self.path))
        except cv2.error as exc:
            raise ModelError(f"{self.path}: OpenCV cannot load this ONNX model: {exc}") from exc
        self._threads = threads
        self.input_size = input_size
        self.sha256 = sha256_file(self.path)
        self.model_id = f"{self.path.stem}:{self.sha256[:16]}"
        self.embedding_size = int(self._forward(np.zeros((1, input_size, input_size, 3), np.uint8)).shape[1])

    def _forward(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(
            list(crops), 1.0, (self.input_size, self.input_size), (0, 0, 0), swapRB=True, crop=False
        )
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
        return l2_normalise(self._forward(crops))


def describe(embedder: Embedder) -> dict:
    """What a report records about the model it measured."""
    if isinstance(embedder, TFLiteEmbedder):
        manifest = embedder.bundle.manifest
        return {
            "kind": "bundle",
            "path": str(embedder.bundle.root),
            "model_id": embedder.model_id,
            "sha256": embedder.bundle.sha256,
            "runtime": getattr(embedder, "runtime", None),
            "quantization": manifest.get("quantisation", manifest.get("quantization")),
        }
    if isinstance(embedder, OnnxEmbedder):
        return {"kind": "onnx-float", "path": str(embedder.path), "model_id": embedder.model_id,
                "sha256": embedder.sha256, "runtime": f"opencv-dnn {cv2.__version__}"}
    return {"kind": type(embedder).__name__, "model_id": getattr(embedder, "model_id", "")}


def open_embedder(path: str | Path, threads: int = 2) -> Embedder:
    """A bundle folder -> TFLiteEmbedder; an ``.onnx`` file -> float OnnxEmbedder."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ModelError(
                f"{path} is a folder without {MANIFEST_NAME}: give a model bundle folder or an .onnx file"
            )
        return TFLiteEmbedder(load_bundle(path, expect_kind="embedder"), threads=threads)
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            return OnnxEmbedder(path, threads=threads)
        if path.name == MANIFEST_NAME:
            return open_embedder(path.parent, threads)
        raise ModelError(
            f"{path}: not a model this tool can open; give a model bundle folder (with {MANIFEST_NAME}) "
            "or a float .onnx file"
        )
    raise ModelError(f"{path}: no such model bundle folder or .onnx file")
