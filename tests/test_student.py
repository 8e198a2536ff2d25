"""The distilled student: MAC counter, a short training run, export round trips, the shipped bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edge_model.student import (  # noqa: E402
    INPUT_MEAN,
    INPUT_STD,
    Student,
    StudentConfig,
    count_macs,
    export_onnx,
    fold_batchnorm,
)

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "faces"
BUNDLE = ROOT / "models" / "student-int8"
TINY = dict(input_size=32, width=1.0, stem=8, stem_out=16, stages=[(32, 1), (32, 1), (64, 1)], head=64)


def test_mac_counter_on_hand_checked_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),  # 8x8 out: 8*8 * 8 * 3*9   = 13824
        nn.BatchNorm2d(8),  # not counted; 16 parameters
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise: 8*8 * 8 * 1*9 = 4608
        nn.Conv2d(8, 16, 1, bias=False),  # pointwise: 8*8 * 16 * 8 = 8192
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),  # 16*4 = 64
    )
    info = count_macs(net, 16)
    assert info["macs"] == 13824 + 4608 + 8192 + 64
    assert info["params"] == 216 + 16 + 72 + 128 + 68
    assert [m for _, m in info["layers"]] == [13824, 4608, 8192, 64]


def test_default_student_meets_the_budget_and_shape():
    model = Student()
    info = count_macs(model, 112)
    assert info["macs"] <= 40_000_000
    model.eval()
    out = model.embed(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # only INT8-friendly activations
    assert not any(isinstance(m, (nn.PReLU, nn.SiLU, nn.GELU, nn.Hardswish)) for m in model.modules())


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    model = Student(StudentConfig(**TINY))
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in folded.modules())
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(model(x), folded(x), atol=1e-4)


def _fixture_crops(size=112):
    from edge_model.crops import build_crops

    return build_crops([FACES], size=size, cache_dir=None, progress=False)


def _fixture_training_set():
    """The fixture faces' crops with random unit teacher targets (crop and mirror) and identity labels."""
    from edge_model.train_student import label_classes

    crop_set = _fixture_crops()
    targets = np.random.default_rng(0).normal(size=(len(crop_set.crops), 2, 128)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=2, keepdims=True)
    return crop_set, targets, *label_classes(crop_set.identities)


def test_short_training_run_lowers_the_loss(tmp_path):
    from edge_model.train_student import load_student, train

    crop_set, targets, labels, classes = _fixture_training_set()
    crops = crop_set.crops
    config = StudentConfig(**TINY)
    model, history = train(crops, targets, labels, classes, tmp_path, config, epochs=6, batch_size=8, lr=5e-3,
                           heldout=0.0, seed=0, device="cpu", aug_strength=0.0, progress=False, steps_per_epoch=4,
                           arc_epochs=2 if classes else 0)
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "curve.png").is_file()
    # resumable: a second call with more epochs continues from the checkpoint
    _, more = train(crops, targets, labels, classes, tmp_path, config, epochs=7, batch_size=8, lr=5e-3,
                    heldout=0.0, seed=0, device="cpu", aug_strength=0.0, progress=False, steps_per_epoch=4,
                    resume=True)
    assert [h["epoch"] for h in more] == list(range(1, 8))
    reloaded = load_student(tmp_path / "last.pt")
    assert reloaded.config.input_size == 32


def test_augmentation_keeps_range_and_size():
    from edge_model.train_student import augment

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 112, 112) * 255
    y = augment(x, 96, gen, np.random.default_rng(0), strength=1.0)
    assert y.shape == (16, 3, 96, 96)
    assert float(y.min()) >= 0 and float(y.max()) <= 255


def test_teacher_interpreter_matches_opencv():
    pytest.importorskip("onnx")
    from edge.errors import ModelError
    from edge_model.teacher import default_teacher_path, load_teacher, teacher_embeddings, teacher_embeddings_cv2

    try:
        path = default_teacher_path()
    except ModelError as exc:
        pytest.skip(str(exc))
    crops = _fixture_crops().crops[:2]
    ours = teacher_embeddings(load_teacher(path), crops, progress=False)
    ref = teacher_embeddings_cv2(path, crops, progress=False)
    assert ours.shape == (2, 2, 128)
    np.testing.assert_allclose((ours * ref).sum(-1), 1.0, atol=1e-4)  # crop and mirror


@pytest.mark.parametrize("readout", ["gdc", "fc"])
def test_onnx_export_round_trip(tmp_path, readout):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = Student(StudentConfig(**TINY, readout=readout)).eval()
    path = tmp_path / "student.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert inp.shape == [1, 3, 32, 32]
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    got = session.run(None, {inp.name: x})[0]
    ref = model(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (1, 128)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("readout", ["gdc", "fc"])
def test_export_convert_load_int8(tmp_path, readout):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    pytest.importorskip("onnxsim")
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder
    from edge_model.convert import convert

    torch.manual_seed(0)
    model = Student(StudentConfig(**TINY, readout=readout)).eval()
    export_onnx(model, tmp_path / "student.onnx")
    (out,) = convert(str(tmp_path / "student.onnx"), ["int8"], calib_roots=[FACES], calib_count=6,
                     out=tmp_path / "b", licence="Apache-2.0", color="rgb", mean=[INPUT_MEAN], std=[INPUT_STD],
                     cache_dir=tmp_path / "cache", progress=False)
    bundle = load_bundle(out, expect_kind="embedder")
    embedder = TFLiteEmbedder(bundle, threads=1)  # XNNPACK must prepare the graph
    crops = _fixture_crops(32).crops
    emb = embedder.embed(crops)
    assert emb.shape == (len(crops), 128)
    assert bundle.manifest["verification"]["cosine_mean"] > 0.9


@pytest.mark.slow
def test_the_fc_readout_reaches_tflite_in_its_own_order(tmp_path):
    """The fc readout flattens an NCHW map in ONNX and an NHWC one in TFLite: a wrong order would still
    give unit vectors, so the float bundle must match the network crop by crop."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    pytest.importorskip("onnxsim")
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder
    from edge_model.convert import convert

    torch.manual_seed(0)
    model = Student(StudentConfig(**TINY, readout="fc")).eval()
    g = torch.Generator().manual_seed(3)
    for m in model.modules():  # live ReLU6 channels, so that every position of the map matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.5 + 0.4 * torch.rand(m.num_features, generator=g))
    export_onnx(model, tmp_path / "student.onnx")
    (out,) = convert(str(tmp_path / "student.onnx"), ["fp32"], calib_roots=[FACES], calib_count=6,
                     out=tmp_path / "b", licence="Apache-2.0", color="rgb", mean=[INPUT_MEAN], std=[INPUT_STD],
                     cache_dir=tmp_path / "cache", progress=False)
    crops = _fixture_crops(32).crops
    got = TFLiteEmbedder(load_bundle(out, expect_kind="embedder"), threads=1).embed(crops)
    x = (torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float() - INPUT_MEAN) / INPUT_STD
    with torch.no_grad():
        want = torch.nn.functional.normalize(model(x), dim=1).numpy()
    spread = np.abs(want - want.mean(0)).max()
    assert spread > 1e-3
    assert np.abs(got - want).max() < 1e-3 * spread


# ------------------------------------------------------------------------------------------ shipped


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="no student bundle")
def test_shipped_bundle_loads_and_embeds():
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder

    bundle = load_bundle(BUNDLE, expect_kind="embedder")
    assert bundle.model_path.stat().st_size < 2_000_000
    embedder = TFLiteEmbedder(bundle, threads=1)
    assert embedder.embedding_size == 128 and embedder.input_size <= 112
    emb = embedder.embed(_fixture_crops().crops)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(not (BUNDLE / "MODEL_CARD.md").is_file(), reason="no student model card")
def test_model_card_numbers_come_from_the_eval_json():
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    results = json.loads((BUNDLE / "eval.json").read_text())
    rows = {}
    for line in card.splitlines():
        m = re.match(r"\|\s*(cfp-f[fp])\s*\|\s*([^|]+?)\s*\|\s*([\d.]+) ± ([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = tuple(float(m.group(i)) for i in (3, 4, 5))
    assert rows, "no accuracy rows in the model card"
    for (protocol, model), (acc, std, tar) in rows.items():
        ref = results[protocol][model]
        assert acc == round(100 * ref["accuracy_mean"], 2)
        assert std == round(100 * ref["accuracy_std"], 2)
        assert tar == round(100 * ref["tar_at_far_1e-3"], 2)
    assert f"{results['macs'] / 1e6:.2f}M" in card


def test_caches_follow_content_not_mtimes(tmp_path):
    """A re-copied data folder (new mtimes) reuses the crop cache; changed pixels never reuse stale targets."""
    import os
    import shutil

    from edge_model.crops import _cache_key, select_images
    from edge_model.train_student import crop_key

    images = tmp_path / "faces"
    shutil.copytree(FACES, images)
    items = select_images([images], None, 0)
    before = _cache_key(items, 112, "detector")
    for path, _ in items:
        os.utime(path, (1, 1))
    assert _cache_key(items, 112, "detector") == before
    first = items[0][0]
    first.write_bytes(first.read_bytes() + b"\0")
    assert _cache_key(items, 112, "detector") != before

    crops = np.zeros((2, 8, 8, 3), np.uint8)
    key = crop_key(["a", "b"], crops, "teacher")
    assert crop_key(["a", "b"], crops.copy(), "teacher") == key
    crops[1, 4, 4, 0] = 1
    assert crop_key(["a", "b"], crops, "teacher") != key


def test_model_card_tool_writes_every_stage_from_the_json(tmp_path):
    """The card generator: two training stages, numbers copied from eval/bench JSON, the bar judged."""
    import shutil

    from click.testing import CliRunner

    from edge_model.student_card import main as card_main

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(BUNDLE / "manifest.json", bundle / "manifest.json")

    def model(name, acc, tar):
        return {"name": name, "accuracy": {"mean": acc, "std": 0.01}, "tar_at_far": {"0.001": {"tar": tar}}}

    report = {"pairs": 7000, "detection": {"failed_pairs": 3},
              "models": [model("student-int8-x", 0.9712, 0.8), model("sface-int8-y", 0.9881, 0.95),
                         model("student-fp32", 0.9731, 0.81)]}
    (tmp_path / "ff.json").write_text(json.dumps(report))
    timing = {"runtime": "ai-edge-litert", "threads": 1, "batch": 1, "median_ms": 2.5, "p90_ms": 2.6}
    bench = {"host": {"machine": "x86_64"}, "models": [
        {"model": "student-int8-x", "size_bytes": 1, "macs": 37_000_000, "params": 4, "timings": [timing]},
        {"model": "sface-int8-y", "size_bytes": 2, "macs": 574_000_000, "params": 5,
         "timings": [dict(timing, median_ms=50.0, p90_ms=55.0)]}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    histories = []
    for stage, (epochs, cos) in enumerate([(3, 0.5), (2, 0.6)]):
        path = tmp_path / f"history{stage}.json"
        path.write_text(json.dumps([{"epoch": e + 1, "step": 10 * (e + 1), "loss": 1.0 - 0.1 * e,
                                     "heldout_cos": cos + 0.01 * e, "elapsed_s": 60.0 * (e + 1)}
                                    for e in range(epochs)]))
        histories += ["--history", str(path), "--command", f"train stage {stage}", "--device-note", f"on box {stage}"]
    result = CliRunner().invoke(card_main, [str(bundle), "--eval", f"cfp-ff={tmp_path / 'ff.json'}",
                                            "--bench", str(tmp_path / "bench.json"), *histories,
                                            "--convert-command", "convert it", "--macs", "37029960",
                                            "--params", "422184"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = (bundle / "MODEL_CARD.md").read_text()
    results = json.loads((bundle / "eval.json").read_text())
    assert [s["epochs_run"] for s in results["training"]["stages"]] == [3, 2]
    assert results["training"]["heldout_cos_to_teacher"] == pytest.approx(0.61)
    assert "Stage 1: 3 epochs / 30 steps in 3.0 min on box 0" in card and "Stage 2: 2 epochs" in card
    assert "train stage 0\ntrain stage 1\nconvert it" in card
    assert "| cfp-ff | student INT8 | 97.12 ± 1.00 | 80.00 |" in card
    assert "CFP-FF within 1.5 points of SFace INT8: NOT met (1.69 points behind)" in card
    assert "20.0x faster" in card and (bundle / "curve.png").stat().st_size > 1000
    assert "cfp-ff +0.19 points (float minus INT8), within 0.3 points" in card
    # a last stage of quantisation-aware fine-tuning, judged against post-training INT8 of the weights before it
    qat_history = json.loads((tmp_path / "history1.json").read_text())
    (tmp_path / "history1.json").write_text(json.dumps([dict(h, qat=True) for h in qat_history]))
    report["models"].append(model("student-ptq-int8-z", 0.9650, 0.7))
    (tmp_path / "ff.json").write_text(json.dumps(report))
    result = CliRunner().invoke(card_main, [str(bundle), "--eval", f"cfp-ff={tmp_path / 'ff.json'}",
                                            "--bench", str(tmp_path / "bench.json"), *histories,
                                            "--convert-command", "convert it", "--macs", "37029960",
                                            "--params", "422184", "--note", "split shared"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "Stage 2 (quantisation-aware fine-tuning): 2 epochs" in card and "- split shared" in card
    assert "| cfp-ff | student INT8 before QAT (post-training only) | 96.50 ± 1.00 | 70.00 |" in card
    assert "within the 0.3-point trigger after quantisation-aware fine-tuning" in card
    assert "QAT changed INT8 accuracy by cfp-ff +0.62 points" in card
    # a stage without its command is refused (two stages, one --command): a usage error, not a crash
    bad = CliRunner().invoke(card_main, [str(bundle), "--eval", f"cfp-ff={tmp_path / 'ff.json'}", "--bench",
                                         str(tmp_path / "bench.json"), "--history", str(tmp_path / "history0.json"),
                                         "--history", str(tmp_path / "history1.json"), "--command", "only one",
                                         "--convert-command", "c", "--macs", "1", "--params", "1"])
    assert bad.exit_code == 2 and "give one --command (and --device-note, if any) per --history" in bad.output
    assert isinstance(bad.exception, SystemExit)


def test_readme_quotes_the_student_figures_of_its_eval_json():
    results = json.loads((BUNDLE / "eval.json").read_text())
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `models/student-int8`"))
    accuracy = 100 * results["cfp-ff"]["student INT8"]["accuracy_mean"]
    assert f"CFP-FF {accuracy:.2f} %" in row, row
    latency = results["latency_1_thread"]
    ratio = latency["SFace INT8"]["median_ms"] / latency["student INT8"]["median_ms"]
    assert f"{ratio:.0f}x faster" in row, row


def test_train_student_command_from_a_pack_with_its_own_architecture(tmp_path):
    """The CLI end to end on a pack: a chosen architecture, resume without repeating it, clear refusals."""
    from click.testing import CliRunner

    from edge_model.train_student import command, load_student, save_pack

    crop_set, targets, _, _ = _fixture_training_set()
    pack = tmp_path / "pack.npz"
    save_pack(pack, crop_set.crops, crop_set.paths, crop_set.identities, None, teacher=targets)
    common = ["--pack", str(pack), "--out", str(tmp_path / "run"), "--input-size", "32", "--steps-per-epoch", "2",
              "--batch-size", "4", "--heldout", "0.2", "--device", "cpu", "--no-export"]
    runner = CliRunner()
    result = runner.invoke(command, [*common, "--stages", "16x1,24x1,32x0", "--head", "32", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert re.search(r"student: [\d.]+M multiply-adds per face", result.output)
    # resuming needs no architecture options: the checkpoint's own is used
    result = runner.invoke(command, [*common, "--resume", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "architecture from" in result.output
    model = load_student(tmp_path / "run" / "last.pt")
    assert model.config.stages == [(16, 1), (24, 1), (32, 0)] and model.config.head == 32
    bad = runner.invoke(command, [*common, "--stages", "64,128x3"])
    assert bad.exit_code == 2 and "CHANNELSxBLOCKS" in bad.output
    bad = runner.invoke(command, [*common, "--qat"])
    assert bad.exit_code == 2 and "--init" in bad.output


def test_architecture_description_follows_the_config():
    from edge_model.student import describe_architecture

    lines = describe_architecture(StudentConfig(**TINY))
    assert lines == [
        "stem: 3x3/2 conv 3->8, depthwise 3x3, 1x1 8->16 (16x16)",
        "reduction Inception 16->32 (8x8), 1 Inception-ResNet block of 32",
        "reduction Inception 32->32 (4x4), 1 Inception-ResNet block of 32",
        "reduction Inception 32->64 (2x2), 1 Inception-ResNet block of 64",
        "head: 1x1 64->64, global depthwise 2x2 (GDC), linear 64->128 (+ folded BatchNorm)",
    ]
    # the GDC kernel is the real final resolution
    model = Student(StudentConfig(**TINY))
    assert model.gdc[0].kernel_size == (2, 2)
    if (BUNDLE / "MODEL_CARD.md").is_file():
        card = (BUNDLE / "MODEL_CARD.md").read_text()
        config = StudentConfig.from_dict(json.loads((BUNDLE / "eval.json").read_text())["architecture"])
        assert all(f"- {line}" in card for line in describe_architecture(config))


def test_mixup_blends_faces_and_asks_the_teacher_for_their_targets(tmp_path):
    from edge_model.train_student import blend_faces, label_classes, train

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 128)).eval()
    x = torch.rand(6, 3, 112, 112) * 255
    target = torch.nn.functional.normalize(torch.randn(6, 128), dim=1)
    gen = torch.Generator().manual_seed(0)
    same_x, same_t, none = blend_faces(x, target, teacher, 0.0, gen)
    assert not none.any() and torch.equal(same_x, x) and torch.equal(same_t, target)
    bx, bt, all_mixed = blend_faces(x, target, teacher, 1.0, gen)
    assert all_mixed.all() and not torch.equal(bx, x)
    assert float(bx.min()) >= float(x.min()) and float(bx.max()) <= float(x.max())  # convex blends
    with torch.no_grad():
        assert torch.allclose(bt, torch.nn.functional.normalize(teacher(bx), dim=1), atol=1e-5)

    crop_set = _fixture_crops()
    crops = crop_set.crops
    with torch.no_grad():  # targets from the same teacher, so blended and plain crops agree
        clean = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float()
        emb = torch.nn.functional.normalize(teacher(clean), dim=1)
        mirrored = torch.nn.functional.normalize(teacher(clean.flip(-1)), dim=1)
    targets = torch.stack([emb, mirrored], 1).numpy()
    labels, classes = label_classes(crop_set.identities)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="teacher"):
        train(crops, targets, labels, classes, tmp_path / "none", StudentConfig(**TINY), epochs=1, mixup=0.5,
              progress=False, steps_per_epoch=1, batch_size=4, heldout=0.0)
    _, history = train(crops, targets, labels, classes, tmp_path / "mix", StudentConfig(**TINY), epochs=6,
                       batch_size=8, lr=5e-3, heldout=0.0, seed=0, device="cpu", aug_strength=0.0, progress=False,
                       steps_per_epoch=4, mixup=0.5, teacher=teacher, arc_epochs=2 if classes else 0)
    assert len(calls) >= 20  # the teacher ran on (nearly) every step
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
