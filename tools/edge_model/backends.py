"""Open any embedder the model tools evaluate: a bundle, or a bare float ONNX reference file.

A bundle is run by the backend its manifest names, through the runtime's own
registry (:data:`edge.app.EMBEDDERS`), so evaluation and tuning measure exactly
what a door unit would run.  A bare ``.onnx`` file is the float reference:
:class:`edge.embedder.OnnxEmbedder` (OpenCV DNN, FaceRecognizerSF
preprocessing).  Both give an :class:`edge.embedder.Embedder`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge.bundle import MANIFEST_NAME, load_bundle
from edge.config import Config
from edge.embedder import Embedder, OnnxEmbedder
from edge.errors import ModelError

__all__ = ["OnnxEmbedder", "describe", "open_embedder"]


def describe(embedder: Embedder) -> dict:
    """What a report records about the model it measured."""
    bundle = getattr(embedder, "bundle", None)
    if bundle is not None:
        manifest = bundle.manifest
        return {
            "kind": "bundle",
            "path": str(bundle.root),
            "model_id": embedder.model_id,
            "sha256": bundle.sha256,
            "backend": bundle.backend,
            "runtime": getattr(embedder, "runtime", None),
            "quantization": manifest.get("quantisation", manifest.get("quantization")),
        }
    if isinstance(embedder, OnnxEmbedder):
        return {"kind": "onnx-float", "path": str(embedder.path), "model_id": embedder.model_id,
                "sha256": embedder.sha256, "runtime": embedder.runtime}
    return {"kind": type(embedder).__name__, "model_id": getattr(embedder, "model_id", "")}


def open_embedder(path: str | Path, threads: int = 2) -> Embedder:
    """A bundle folder -> the backend its manifest names; an ``.onnx`` file -> float OnnxEmbedder."""
    from edge.app import EMBEDDERS

    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ModelError(
                f"{path} is a folder without {MANIFEST_NAME}: give a model bundle folder or an .onnx file"
            )
        bundle = load_bundle(path, expect_kind="embedder")
        config = Config()
        config = dataclasses.replace(config, embedder=dataclasses.replace(config.embedder, threads=threads))
        return EMBEDDERS.load(bundle.backend).from_config(bundle, config)
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
