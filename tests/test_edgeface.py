"""EdgeFace-XXS: the ONNX preparation before onnx2tf (on a small graph with the same patterns, and on the real
export against the original on aligned fixture faces), the shipped bundle through the device's embedder, and
its model card against the eval reports it quotes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import FIXTURES, MODELS, ROOT

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_model import onnx_prepare  # noqa: E402

EDGEFACE_ONNX = ROOT.parent / "shared" / "models" / "edgeface-xxs" / "edgeface_xxs_float.onnx"
BUNDLE = MODELS / "edgeface-xxs-fp16"
EDGEFACE_INPUT = {"width": 112, "height": 112, "channels": 3, "layout": "NCHW", "color": "RGB",
                  "mean": [127.5] * 3, "std": [127.5] * 3}
needs_edgeface = pytest.mark.skipif(not EDGEFACE_ONNX.is_file(), reason=f"{EDGEFACE_ONNX} is not present")
needs_bundle = pytest.mark.skipif(not BUNDLE.is_dir(), reason="no EdgeFace bundle")


def _patterned_graph():
    """A small opset-17 graph with EdgeFace's export patterns: a dynamic batch read back through Shape into
    a Reshape target, Conv -> Transpose -> LayerNorm -> Gemm, an exact GELU (Div sqrt 2, Erf, Add, Mul, Mul),
    F.normalize (ReduceL2, Clip, Expand, Div), node names starting with '/', tensor names with '::'."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        const("w", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)),
        const("b", rng.normal(0, 0.1, (4,)).astype(np.float32)),
        const("gamma", rng.uniform(0.01, 1.5, (4,)).astype(np.float32)),
        const("beta", rng.normal(0, 0.2, (4,)).astype(np.float32)),
        const("onnx::Gemm_w", rng.normal(0, 0.5, (6, 4)).astype(np.float32)),
        const("gemm_b", rng.normal(0, 0.1, (6,)).astype(np.float32)),
        const("sqrt2", np.array(2 ** 0.5, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("half", np.array(0.5, np.float32)),
        const("eps", np.array(1e-12, np.float32)),
        const("flat", np.array([-1, 4], np.int64)),
        const("zero", np.array([0], np.int64)),
        const("tokens", np.array([64, 6], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["/c"], name="/stem/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["/c"], ["/t"], name="/stem/Transpose", perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["/t", "gamma", "beta"], ["/ln"], name="/norm/LayerNormalization",
                         axis=-1, epsilon=1e-6),
        helper.make_node("Reshape", ["/ln", "flat"], ["/rows"], name="/fc/Reshape"),
        helper.make_node("Gemm", ["/rows", "onnx::Gemm_w", "gemm_b"], ["/h"], name="/fc/Gemm", transB=1),
        helper.make_node("Shape", ["input"], ["/shape"], name="/shape/Shape"),
        helper.make_node("Gather", ["/shape", "zero"], ["/n"], name="/shape/Gather", axis=0),
        helper.make_node("Concat", ["/n", "tokens"], ["/target"], name="/shape/Concat", axis=0),
        helper.make_node("Reshape", ["/h", "/target"], ["/tok"], name="/tok/Reshape"),
        helper.make_node("Div", ["/tok", "sqrt2"], ["/g1"], name="/act/Div"),
        helper.make_node("Erf", ["/g1"], ["/g2"], name="/act/Erf"),
        helper.make_node("Add", ["/g2", "one"], ["/g3"], name="/act/Add"),
        helper.make_node("Mul", ["/tok", "/g3"], ["/g4"], name="/act/Mul"),
        helper.make_node("Mul", ["/g4", "half"], ["/g"], name="/act/Mul_1"),
        helper.make_node("ReduceL2", ["/g"], ["/norm"], name="/xca/ReduceL2", axes=[1], keepdims=1),
        helper.make_node("Clip", ["/norm", "eps"], ["/safe"], name="/xca/Clip"),
        helper.make_node("Shape", ["/g"], ["/gshape"], name="/xca/Shape"),
        helper.make_node("Expand", ["/safe", "/gshape"], ["/wide"], name="/xca/Expand"),
        helper.make_node("Div", ["/g", "/wide"], ["/unit"], name="/xca/Div"),
        helper.make_node("ReduceMean", ["/unit"], ["embedding"], name="/pool/ReduceMean", axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "patterned",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_prepare_rewrites_each_pattern_and_computes_the_same():
    pytest.importorskip("onnxsim")
    model = _patterned_graph()
    inputs = np.random.default_rng(1).normal(0, 1, (5, 3, 8, 8)).astype(np.float32)
    prepared = onnx_prepare.prepare(model, inputs)
    steps = [s["step"] for s in prepared.steps]
    assert steps == ["fix_batch", "simplify", "raise_opset", "fuse_gelu", "l2norm_rsqrt", "layernorm_centred",
                     "rename", "check"]
    ops = {n.op_type for n in prepared.model.graph.node}
    assert not ops & {"Erf", "Shape", "ReduceL2", "Div", "LayerNormalization", "Expand"}
    assert "Gelu" in ops and prepared.batch == 1 and prepared.shapes_folded
    assert not onnx_prepare.bad_names(prepared.model) and not onnx_prepare.needs(prepared.model)
    assert prepared.steps[-1]["cosine_min"] >= 0.99999
    # the original is untouched and still dynamic
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    got, want = onnx_prepare.run(prepared.model, inputs), onnx_prepare.run(model, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_prepare_leaves_a_graph_that_needs_nothing_alone():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv/Conv"),  # onnx2tf takes such names itself
         helper.make_node("Relu", ["c"], ["y"], name="/relu")],
        "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert onnx_prepare.needs(model) == []
    prepared = onnx_prepare.prepare(model, np.zeros((1, 3, 4, 4), np.float32))
    assert prepared.model is model and prepared.steps == [] and not prepared.changed


def test_prepare_refuses_a_rewrite_that_changes_the_output(monkeypatch):
    pytest.importorskip("onnxsim")
    model = _patterned_graph()
    real = onnx_prepare.fuse_gelu

    def wrong(m):  # an exact-looking rewrite to the tanh form that is then scaled wrong
        count = real(m)
        for node in m.graph.node:
            if node.op_type == "Gelu":
                node.op_type = "Relu"
                del node.attribute[:]
        return count

    monkeypatch.setattr(onnx_prepare, "fuse_gelu", wrong)
    with pytest.raises(onnx_prepare.PrepareError, match="differs from the original"):
        onnx_prepare.prepare(model, np.random.default_rng(2).normal(0, 1, (3, 3, 8, 8)).astype(np.float32))


# ------------------------------------------------------------------------------------------ EdgeFace itself


def _nchw(crops) -> np.ndarray:
    from edge.embedder import preprocess

    return np.ascontiguousarray(preprocess(list(crops), EDGEFACE_INPUT).transpose(0, 3, 1, 2))


@needs_edgeface
def test_edgeface_prepared_graph_matches_the_export_on_aligned_faces(fixture_crops):
    pytest.importorskip("onnxsim")
    started = time.monotonic()
    original = onnx.load(str(EDGEFACE_ONNX))
    inputs = _nchw(fixture_crops.values())
    prepared = onnx_prepare.prepare(original, inputs)
    assert [s["step"] for s in prepared.steps] == [
        "fix_batch", "simplify", "raise_opset", "fuse_gelu", "l2norm_rsqrt", "layernorm_centred", "rename", "check"]
    assert {s["step"]: s for s in prepared.steps}["fuse_gelu"]["fused"] == 12
    assert {n.op_type for n in prepared.model.graph.node}.isdisjoint({"Erf", "Shape", "CumSum", "LayerNormalization"})
    a = onnx_prepare.run(prepared.model, inputs)
    b = onnx_prepare.run(original, inputs)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos
    assert time.monotonic() - started < 60


@needs_edgeface
def test_edgeface_is_known_by_sha256_with_its_input_convention():
    from edge.bundle import sha256_file
    from edge_model.convert import KNOWN_INPUTS, inspect_source

    source = inspect_source(EDGEFACE_ONNX)
    assert source.known == "edgeface-xxs" and sha256_file(EDGEFACE_ONNX) == source.sha256
    assert KNOWN_INPUTS["edgeface-xxs"] == {k: EDGEFACE_INPUT[k] for k in ("color", "mean", "std")}


# ------------------------------------------------------------------------------------------ shipped bundle


@needs_bundle
def test_shipped_bundle_runs_in_the_device_embedder(fixture_crops):
    from edge.app import build_embedder
    from edge.config import config_from_dict

    embedder = build_embedder(config_from_dict({"embedder": {"model": str(BUNDLE), "threads": 1}}))
    manifest = embedder.bundle.manifest
    assert embedder.embedding_size == 512 and manifest["batch"] == 1
    assert manifest["input"]["color"] == "RGB" and manifest["input"]["mean"] == [127.5] * 3
    assert manifest["source_model"]["sha256"] == "7428abecaaad388215e44a6141977191c9a16a26830905d5aeb4bc94da4c5a7c"
    assert "non-commercial" in manifest["licence"] and "BSD-3-Clause" in manifest["licence"]
    assert (BUNDLE / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert embedder.bundle.model_path.stat().st_size < 3_000_000

    names = sorted(fixture_crops)
    emb = dict(zip(names, embedder.embed([fixture_crops[n] for n in names])))  # a batch on a batch-1 graph
    d = lambda a, b: float(np.linalg.norm(emb[a] - emb[b]))  # noqa: E731
    genuine = [d("person_a_1", "person_a_2"), d("person_b_1", "person_b_2")]
    impostor = [d(a, b) for i, a in enumerate(names) for b in names[i + 1:] if a[:8] != b[:8] or "impostor" in a]
    assert max(genuine) < min(impostor), (genuine, sorted(impostor)[:3])
    single = np.stack([embedder.embed_one(fixture_crops[n]) for n in names])
    np.testing.assert_allclose(single, np.stack([emb[n] for n in names]), atol=1e-5)


@needs_bundle
@needs_edgeface
def test_shipped_bundle_matches_the_float_export(fixture_crops):
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder

    crops = list(fixture_crops.values())
    got = TFLiteEmbedder(load_bundle(BUNDLE, expect_kind="embedder"), threads=1).embed(crops)
    want = onnx_prepare.run(onnx.load(str(EDGEFACE_ONNX)), _nchw(crops))
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert float((got * want).sum(1).min()) >= 0.9999


CARD_ROW = re.compile(r"\|\s*(cfp-f[fp])\s*\|\s*`([^`]+)`[^|]*\|\s*([\d.]+) % ± ([\d.]+)\s*\|\s*([\d.]+) %\s*\|"
                      r"\s*([\d.]+) %\s*\|\s*([\d.]+)\s*\|\s*(\d+)\s*\|")


@needs_bundle
@pytest.mark.skipif(not (BUNDLE / "MODEL_CARD.md").is_file(), reason="no EdgeFace model card")
def test_model_card_numbers_are_the_eval_reports():
    card = (BUNDLE / "MODEL_CARD.md").read_text(encoding="utf-8")
    reports = {}
    for path in sorted((BUNDLE / "eval").glob("*/report.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        for model in report["models"]:
            reports[(report["protocol"], model["name"])] = (report, model)
    rows = [m.groups() for m in CARD_ROW.finditer(card)]
    assert len(rows) >= 4, "the card's accuracy table is missing"
    for protocol, name, acc, std, tar2, tar3, auc, failed in rows:
        report, model = reports[(protocol, name)]
        assert float(acc) == round(100 * model["accuracy"]["mean"], 2), (protocol, name)
        assert float(std) == round(100 * model["accuracy"]["std"], 2), (protocol, name)
        assert float(tar2) == round(100 * model["tar_at_far"]["0.01"]["tar"], 2), (protocol, name)
        assert float(tar3) == round(100 * model["tar_at_far"]["0.001"]["tar"], 2), (protocol, name)
        assert float(auc) == round(model["auc"], 4), (protocol, name)
        assert int(failed) == report["detection"]["failed_images"], (protocol, name)
    assert {("cfp-ff", BUNDLE.name), ("cfp-fp", BUNDLE.name)} <= {(r[0], r[1]) for r in rows}

    manifest = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))
    threshold = manifest["threshold"]
    assert threshold is not None and f"**{threshold['l2']:.4f}**" in card
    assert f"edge-model tune {BUNDLE.relative_to(ROOT)} --people {threshold['source'].split(':', 1)[1]}" in card
    assert f"{100 * threshold['tar']:.1f} %" in card and f"{threshold['genuine_pairs']:,}" in card
    assert manifest["sha256"] in card and f"{manifest['size_bytes']:,}" in card
