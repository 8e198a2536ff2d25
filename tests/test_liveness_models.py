"""The shipped liveness bundles and their runtime: upstream samples judged right, the crop rule, fail-closed loading.

The upstream samples (``../shared/models/minifasnet/samples``: F1 and F2 attacks, T1 a real face) go through
the device's path: YuNet box, :func:`edge.liveness.liveness_crop` at each model's scale, the shipped bundles,
the averaged P(real).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.bundle import load_bundle, write_manifest
from edge.errors import ConfigError, ModelError, ModelIntegrityError
from edge.liveness import (LIVENESS_BACKENDS, LivenessEnsemble, LivenessModel, TFLiteLiveness, crop_box,
                           liveness_crop, load_liveness)

from .conftest import FIXTURES, MODELS, ROOT

SHARED_MODELS = ROOT.parent / "shared" / "models" / "minifasnet"
SAMPLES = SHARED_MODELS / "samples"
V2, V1SE = MODELS / "minifasnet-v2-fp16", MODELS / "minifasnet-v1se-fp16"
BUNDLES = [V2, V1SE]
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/models/minifasnet is not present")


@pytest.fixture(scope="module")
def ensemble() -> LivenessEnsemble:
    return load_liveness(BUNDLES, threads=1)


def _largest_box(detector, image):
    faces = detector.detect_image(image)
    assert faces, "YuNet found no face"
    return max(faces, key=lambda f: f.box[2] * f.box[3]).box


def _copy_bundle(tmp_path: Path, source: Path = V2) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


# --------------------------------------------------------------------------- shipped bundles


def test_bundles_load_with_their_scales(ensemble):
    v2, v1se = ensemble.models
    assert isinstance(v2, TFLiteLiveness) and isinstance(v1se, TFLiteLiveness)
    assert (v2.scale, v1se.scale) == (2.7, 4.0)
    assert v2.size == v1se.size == 80 and v2.classes == 3 and v2.real_class == 1
    assert v2.name == "minifasnet-v2-fp16" and v2.model_id.startswith("minifasnet-v2-fp16:")
    assert v2.bundle.manifest["source_model"]["origin"].startswith("minivision-ai/Silent-Face-Anti-Spoofing @ b6d5f04a")
    assert v2.bundle.manifest["licence"] == "Apache-2.0"
    assert (V2 / "LICENSE").is_file() and (V2 / "MODEL_CARD.md").is_file()


@needs_samples
@pytest.mark.parametrize("name, real", [("F1", False), ("F2", False), ("T1", True)])
def test_upstream_samples_are_judged_right(ensemble, detector, name, real):
    image = cv2.imread(str(SAMPLES / f"image_{name}.jpg"))
    box = _largest_box(detector, image)
    (score,) = ensemble.scores(image, [box])
    assert bool(score >= 0.5) is real, score
    # upstream's own decision: the arg-max of the averaged softmax
    mean = np.mean([model.probabilities(image, [box])[0] for model in ensemble.models], axis=0)
    assert (int(mean.argmax()) == 1) is real, mean
    # the float models' figures with YuNet boxes (../shared/models/README.md): F1 0.229, F2 0.002, T1 1.000
    expected = {"F1": 0.229, "F2": 0.002, "T1": 1.000}[name]
    assert score == pytest.approx(expected, abs=0.01)


def test_probabilities_and_scores_shapes(ensemble, detector):
    image = cv2.imread(str(FIXTURES / "person_a_1.jpg"))
    box = _largest_box(detector, image)
    v2 = ensemble.models[0]
    probabilities = v2.probabilities(image, [box, box])
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(v2.real_scores(image, [box]), probabilities[:1, 1])
    assert ensemble.model_scores(image, [box]).shape == (1, 2)
    assert np.allclose(ensemble.scores(image, [box]), ensemble.model_scores(image, [box]).mean(axis=1))
    assert ensemble.scores(image, []).shape == (0,) and v2.probabilities(image, []).shape == (0, 3)


def test_from_bundle_takes_a_folder_or_a_bundle():
    by_path = LivenessModel.from_bundle(V1SE)
    by_bundle = TFLiteLiveness.from_bundle(load_bundle(V1SE, expect_kind="liveness"), threads=2, delegate=None)
    assert type(by_path) is TFLiteLiveness and by_path.model_id == by_bundle.model_id and by_path.scale == 4.0


# --------------------------------------------------------------------------- fail closed


def test_tampered_model_file_is_refused(tmp_path):
    copy = _copy_bundle(tmp_path)
    model = copy / json.loads((copy / "manifest.json").read_text())["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_liveness([V1SE, copy])
    with pytest.raises(ModelIntegrityError):
        LivenessModel.from_bundle(copy)


def test_hand_edited_manifest_is_refused(tmp_path):
    copy = _copy_bundle(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["crop"]["scale"] = 4.0  # feeds the model crops it was not trained on
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ModelIntegrityError, match="integrity"):
        load_liveness([copy])


def test_other_kinds_and_incomplete_manifests_are_refused(tmp_path):
    with pytest.raises(ModelError, match="expected a liveness"):
        load_liveness([MODELS / "sface-int8"])
    with pytest.raises(ConfigError):
        load_liveness([])
    copy = _copy_bundle(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["crop"]
    write_manifest(copy, manifest)  # sealed, but says nothing of the crop
    with pytest.raises(ModelError, match="crop.scale"):
        load_liveness([copy])


class FakeLiveness(LivenessModel):
    """Says every face is real: only to show that a manifest's backend picks the class."""

    def __init__(self, bundle, threads=1, delegate=None):
        super().__init__(bundle)
        self.threads = threads

    def outputs(self, crops):
        return np.tile(np.array([[-5.0, 5.0, -5.0]], np.float32), (len(crops), 1))


def test_backend_is_chosen_by_the_manifest(tmp_path, monkeypatch):
    copy = _copy_bundle(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {**manifest, "backend": "fake"})
    with pytest.raises(ConfigError, match="unknown liveness backend 'fake'"):
        load_liveness([copy])
    monkeypatch.setitem(LIVENESS_BACKENDS._builtin, "fake", f"{__name__}:FakeLiveness")
    (model,) = load_liveness([copy], threads=3).models
    assert isinstance(model, FakeLiveness) and model.threads == 3
    image = np.zeros((120, 160, 3), np.uint8)
    assert model.real_scores(image, [(40, 30, 50, 60)])[0] > 0.99


# --------------------------------------------------------------------------- the crop


def test_crop_box_in_the_middle_scales_about_the_centre():
    # box 50x60 at (100, 100), scale 2.7: 135x162 around (125, 130)
    assert crop_box(640, 480, (100, 100, 50, 60), 2.7) == (57, 49, 192, 211)


def test_crop_box_at_the_top_left_edge_is_shifted_inside():
    assert crop_box(200, 200, (-10, -5, 40, 40), 2.7) == (0, 0, 108, 108)


def test_crop_box_at_the_bottom_right_edge_is_shifted_inside():
    assert crop_box(200, 100, (180, 80, 30, 30), 2.7) == (118, 18, 199, 99)


def test_box_larger_than_the_image_shrinks_to_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    box = (-20, -20, 150, 120)
    assert crop_box(100, 80, box, 4.0) == (0, 0, 99, 79)
    crop = liveness_crop(image, box, 4.0)
    assert crop.shape == (80, 80, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, cv2.resize(image, (80, 80)))


def test_crops_stay_inside_the_image():
    rng = np.random.default_rng(1)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 700, 2))
        box = (rng.uniform(-200, width), rng.uniform(-200, height), rng.uniform(1, 900), rng.uniform(1, 900))
        scale = float(rng.choice([1.0, 2.7, 4.0]))
        left, top, right, bottom = crop_box(width, height, box, scale)
        assert 0 <= left <= right <= width - 1 and 0 <= top <= bottom <= height - 1, (width, height, box, scale)


def test_crop_matches_the_upstream_slice_and_size():
    image = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3).astype(np.uint8)
    left, top, right, bottom = crop_box(640, 480, (300, 200, 80, 100), 2.7)
    crop = liveness_crop(image, (300, 200, 80, 100), 2.7, size=64)
    assert crop.shape == (64, 64, 3)
    assert np.array_equal(crop, cv2.resize(image[top : bottom + 1, left : right + 1], (64, 64)))


@pytest.mark.parametrize("box", [(10, 10, 0, 20), (10, 10, 20, -1), (float("nan"), 0, 10, 10)])
def test_degenerate_boxes_are_refused(box):
    with pytest.raises(ValueError):
        liveness_crop(np.zeros((50, 50, 3), np.uint8), box, 2.7)


def test_grey_images_are_refused():
    with pytest.raises(ValueError, match="BGR"):
        liveness_crop(np.zeros((50, 50), np.uint8), (10, 10, 20, 20), 2.7)


# --------------------------------------------------------------------------- conversion


def _tiny_classifier(path: Path, size: int = 32) -> Path:
    """Conv(3->8, s2) -> PRelu -> GAP -> Flatten -> Gemm(8->3): a 3-class 'liveness' model, NCHW, batch 1."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.01, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "slope"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 8)).astype(np.float32), "wf"),
        numpy_helper.from_array(np.zeros((3,), np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("PRelu", ["c1", "slope"], ["a1"]),
        helper.make_node("GlobalAveragePool", ["a1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_liveness", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _convert(*args):
    from edge_model.cli import main

    return CliRunner().invoke(main, ["convert", *map(str, args), "--no-progress"], catch_exceptions=False)


@pytest.mark.slow
def test_tiny_classifier_round_trip(tmp_path):
    pytest.importorskip("onnx2tf")
    ort = pytest.importorskip("onnxruntime")
    from edge.liveness import softmax
    from edge_model.crops import build_liveness_crops

    src = _tiny_classifier(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny-liveness"
    result = _convert(src, "--kind", "liveness", "--quant", "int8", "--crop-scale", 2.7, "--real-class", 1,
                      "--licence", "MIT", "--color", "BGR", "--calib", FIXTURES, "--calib-count", 6, "--out", out,
                      "--origin", "a test graph", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    model = LivenessModel.from_bundle(out)
    manifest = model.bundle.manifest
    assert manifest["kind"] == "liveness" and manifest["crop"] == {"scale": 2.7}
    assert manifest["output"] == {"classes": 3, "real_class": 1, "values": "logits"}
    assert manifest["input"]["color"] == "BGR" and manifest["input"]["dtype"] == "int8"
    assert manifest["source_model"]["origin"] == "a test graph" and "embedding_size" not in manifest
    assert "liveness_crop at scale 2.7" in manifest["calibration"]["pipeline"]
    assert manifest["verification"]["argmax_agree"] >= 1
    assert "Crop: the detector's face box scaled 2.7x" in (out / "MODEL_CARD.md").read_text()

    crops = build_liveness_crops([FIXTURES], 2.7, size=32, cache_dir=tmp_path / "cache", progress=False).crops
    got = model.crop_probabilities(crops)
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = softmax(np.concatenate([session.run(None, {"input": c.astype(np.float32).transpose(2, 0, 1)[None]})[0]
                                  for c in crops]))
    assert np.abs(got - ref).max() < 0.05


def test_liveness_conversion_needs_scale_and_real_class(tmp_path):
    src = _tiny_classifier(tmp_path / "tiny.onnx")
    result = _convert(src, "--kind", "liveness", "--quant", "fp32", "--licence", "MIT", "--out", tmp_path / "a")
    assert result.exit_code != 0 and "--crop-scale" in result.output
    result = _convert(src, "--kind", "liveness", "--quant", "fp32", "--licence", "MIT", "--crop-scale", 2.7,
                      "--out", tmp_path / "b")
    assert result.exit_code != 0 and "--real-class" in result.output


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason="../shared/models/minifasnet is not present")
def test_known_minifasnet_guards_its_conventions(tmp_path):
    v2 = SHARED_MODELS / "2.7_80x80_MiniFASNetV2.onnx"
    result = _convert(v2, "--kind", "liveness", "--quant", "fp32", "--crop-scale", 4.0, "--out", tmp_path / "a")
    assert result.exit_code != 0 and "scaled 2.7x, not 4x" in result.output
    result = _convert(v2, "--quant", "fp32", "--out", tmp_path / "b")
    assert result.exit_code != 0 and "--kind liveness" in result.output


# --------------------------------------------------------------------------- model tool checks


@needs_samples
def test_compare_liveness_finds_the_float_sources_and_no_flips(tmp_path):
    from edge_model.cli import main

    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["compare-liveness", str(V2), str(V1SE), "--set", f"upstream={SAMPLES}/*.jpg",
                                       "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (part,) = json.loads(out.read_text())["sets"]
    assert part["faces"] == 3 and part["ensemble"]["threshold_flips"] == 0 and part["ensemble"]["argmax_flips"] == 0
    assert part["ensemble"]["real_prob_max_diff"] < 0.01
    assert [face["float_score"] < 0.5 for face in part["faces_detail"]] == [True, True, False]  # F1, F2, T1


def test_check_arm_compares_classes_and_refuses_detectors():
    from edge_model import check_arm

    probs = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    moved = probs.copy()
    moved[1] = [0.3, 0.6, 0.1]
    stats = check_arm.compare({"raw": probs, "outputs": probs}, {"raw": moved, "outputs": moved})
    assert stats["argmax_flips"] == 1 and stats["float_max_diff"] == pytest.approx(0.3)
    with pytest.raises(ModelError, match="is a detector"):
        check_arm._checked_bundle(MODELS / "yunet")


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(n) for n in ("qemu-aarch64-static", "qemu-aarch64")),
                    reason="qemu-user-static is not installed")
def test_liveness_bundle_matches_x86_on_arm64():
    from edge_model.cli import main

    result = CliRunner().invoke(main, ["check-arm", str(V2), "--cpu", "pi5", "--runtime", "ai-edge-litert",
                                       "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (row,) = report["results"]
    assert report["kind"] == "liveness" and row["passed"] and row["argmax_flips"] == 0
    assert row["arm"]["machine"] == "aarch64" and row["min_cosine"] > 0.9999


def test_the_cards_door_figures_come_from_the_eval_report():
    """Every rate in the card's per-set table is the eval-liveness report's, at the threshold the door ships."""
    from edge.config import default_config

    report = json.loads((V2 / "eval" / "liveness-ensemble.json").read_text())
    assert report["threshold"] == default_config().liveness.threshold
    assert report["max_face_fraction"] == default_config().liveness.max_face_fraction
    card = (V2 / "MODEL_CARD.md").read_text()
    card = card[card.index("## The pair at the door"):card.index("## arm64")]
    rows = {}
    for line in card.splitlines():  # a set's first row is its per-set row (the by-size table follows)
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    for entry in report["sets"]:
        label = "BPCER" if entry["kind"] == "real" else "APCER"
        row = rows[entry["set"]]
        assert f"| {entry['faces']} / {entry['images']} | {entry['too_close']} |" in row, row
        rate = entry.get(label)
        assert ("n/a (none judged)" if rate is None else f"{label} {100 * rate:.1f} %") in row, row
        assert f"{label} {100 * entry[label + '_judging_every_face']:.1f} %" in row, row
    for visit in report["visits"]:
        label = "BPCER" if visit["kind"] == "real" else "APCER"
        assert f"| {visit['passed']} / {visit['visits']} | {label} {100 * visit[label]:.1f} % |" in rows[visit["set"]]
