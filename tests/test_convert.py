"""edge-model convert: a tiny ONNX embedder -> full-INT8 bundle that the runtime loads; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_model.cli import main

FACES = Path(__file__).parent / "fixtures" / "faces"


def _run(*args):
    result = CliRunner().invoke(main, ["convert", *map(str, args), "--no-progress"], catch_exceptions=False)
    return result


def _tiny_onnx(path: Path, out_rank: int = 2, size: int = 32) -> Path:
    """Conv(3->8, s2) -> PRelu -> Conv(8->16, s2) -> Relu -> GAP -> Flatten -> Gemm(16->32), NCHW, batch 1."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "slope"),
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (32, 16)).astype(np.float32), "wf"),
        numpy_helper.from_array(rng.normal(0, 0.1, (32,)).astype(np.float32), "bf"),
        numpy_helper.from_array(np.array([127.5], np.float32), "mean"),
        numpy_helper.from_array(np.array([1 / 128], np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["data", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("PRelu", ["c1", "slope"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
    ]
    if out_rank == 2:
        nodes += [
            helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "wf", "bf"], ["emb"], transB=1),
        ]
        out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 32])
    else:  # a dense map, like a segmenter or detector head: not an embedder
        nodes.append(helper.make_node("Identity", ["a2"], ["emb"]))
        out = helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 16, size // 4, size // 4])
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])], [out], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_tiny_onnx_to_int8_bundle(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    ort = pytest.importorskip("onnxruntime")
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder, preprocess
    from edge_model.crops import build_crops

    src = _tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny-int8"
    result = _run(src, "--quant", "int8", "--calib", FACES, "--calib-count", 6, "--seed", 0, "--out", out,
                  "--licence", "MIT", "--color", "RGB", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out, expect_kind="embedder")
    manifest = bundle.manifest
    assert manifest["input"]["layout"] == "NHWC" and manifest["input"]["dtype"] == "int8"
    assert manifest["calibration"]["seed"] == 0 and 1 <= manifest["calibration"]["count"] <= 6
    assert len(manifest["calibration"]["sha256"]) == 64
    assert manifest["source_model"]["licence"] == "MIT" and manifest["embedding_size"] == 32
    assert (out / "MODEL_CARD.md").is_file() and (out / "calibration_images.txt").is_file()

    embedder = TFLiteEmbedder(bundle, threads=1)
    assert embedder.runtime in ("ai-edge-litert", "tflite-runtime")
    crops = build_crops([FACES], size=32, cache_dir=tmp_path / "cache", progress=False).crops
    got = embedder.embed(crops)  # batch > 1 through the dynamic batch dimension
    assert got.shape == (len(crops), 32) and got.dtype == np.float32

    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    nchw = np.transpose(preprocess(crops, manifest["input"]), (0, 3, 1, 2))
    ref = np.concatenate([session.run(None, {"data": nchw[i : i + 1]})[0] for i in range(len(crops))])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cosine = (got * ref).sum(axis=1)
    assert cosine.min() > 0.95, cosine


def test_missing_file(tmp_path):
    """A ConvertError is a ModelError: the boundary keeps its exit status (66, EX_NOINPUT), not click's 1."""
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "absent.onnx"), "--quant", "fp32"])
    assert result.exit_code == 66
    assert "edge: error: " in result.output and "does not exist" in result.output


def test_garbage_bytes(tmp_path):
    pytest.importorskip("onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(bytes(range(256)) * 8)
    result = CliRunner().invoke(main, ["convert", str(bad), "--quant", "fp32", "--licence", "MIT"])
    assert result.exit_code == 66
    assert "not a readable ONNX model" in result.output or "not a valid ONNX model" in result.output \
        or "holds no ONNX graph" in result.output


def test_onnx_that_is_not_a_model(tmp_path):
    pytest.importorskip("onnx")
    from onnx import numpy_helper

    tensor = tmp_path / "weights.onnx"  # a serialized TensorProto, not a ModelProto
    tensor.write_bytes(numpy_helper.from_array(np.ones((4, 4), np.float32), "w").SerializeToString())
    result = CliRunner().invoke(main, ["convert", str(tensor), "--quant", "fp32", "--licence", "MIT"])
    assert result.exit_code == 66
    assert "ONNX" in result.output and "Traceback" not in result.output


def test_not_an_embedder(tmp_path):
    src = _tiny_onnx(tmp_path / "dense.onnx", out_rank=4)
    result = CliRunner().invoke(main, ["convert", str(src), "--quant", "fp32", "--licence", "MIT"])
    assert result.exit_code == 66
    assert "not a 2-D (N, D) embedding" in result.output


def test_unknown_licence_refused(tmp_path):
    src = _tiny_onnx(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(main, ["convert", str(src), "--quant", "fp32"])
    assert result.exit_code == 66
    assert "--licence" in result.output
