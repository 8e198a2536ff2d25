"""The EdgeNeXt student: EdgeFace-XXS in PyTorch, its INT8-friendly form (no LayerNorm, no attention,
inside the MAC budget), the exact folding and equalisation behind its export, and the stage trainer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edge_model import edgenext as ex  # noqa: E402
from edge_model.student import INPUT_STD, count_macs  # noqa: E402
from edge_model.train_consistent import ViewRecipe, draw_view, student_input  # noqa: E402
from edge_model.train_edgenext import Trainer, teacher_input  # noqa: E402
from edge_model.train_student import optimiser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "faces"
EDGEFACE_ONNX = ROOT.parent / "shared" / "models" / "edgeface-xxs" / "edgeface_xxs_float.onnx"
needs_edgeface = pytest.mark.skipif(not EDGEFACE_ONNX.is_file(), reason=f"{EDGEFACE_ONNX} is not present")


@pytest.fixture(scope="module")
def crops():
    from edge_model.crops import build_crops

    return build_crops([FACES], size=112, cache_dir=None, progress=False).crops


@pytest.fixture(scope="module")
def edgeface():
    if not EDGEFACE_ONNX.is_file():
        pytest.skip(f"{EDGEFACE_ONNX} is not present")
    return ex.edgeface_from_onnx(EDGEFACE_ONNX)


def _rgb(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops).flip(-1).permute(0, 3, 1, 2).float()


@needs_edgeface
def test_edgeface_in_pytorch_computes_its_onnx_export(crops, edgeface):
    pytest.importorskip("onnxruntime")
    from edge_model.onnx_teacher import OnnxTeacher

    x = _rgb(crops)
    theirs = OnnxTeacher(EDGEFACE_ONNX)(x)
    with torch.no_grad():
        ours = edgeface(teacher_input(x))
    assert F.cosine_similarity(ours, theirs).min().item() > 0.99999
    assert sum(p.numel() for p in edgeface.parameters()) == 1_244_744  # the README's count


@needs_edgeface
def test_the_student_has_no_layernorm_or_attention_and_fits_the_budget(crops, edgeface, tmp_path):
    batches = [teacher_input(_rgb(crops))]
    frozen = copy.deepcopy(edgeface).requires_grad_(False)  # as the trainer holds its teacher
    student, basis = ex.student_from_edgeface(frozen, batches, 39_500_000, 128, INPUT_STD)
    assert all(p.requires_grad for p in student.parameters())  # every weight trains, not just the new ones
    assert not any(isinstance(m, (ex.ChannelNorm, ex.XCA)) for m in student.modules())
    assert ex.folded_macs(student) <= 39_500_000 < ex.folded_macs(ex.replace_norms(edgeface, batches))
    assert student.config.embedding_size == 128 and basis.shape == (128, 512)
    torch.testing.assert_close(basis @ basis.t(), torch.eye(128), atol=1e-4, rtol=0)
    # the start still computes much of EdgeFace's function on these faces (in its 128-D subspace)
    x = _rgb(crops)
    with torch.no_grad():
        ours = student.embed(student_input(x, 112))
        target = F.normalize(edgeface.embed(teacher_input(x)) @ basis.t(), dim=1)
    assert F.cosine_similarity(ours, target).mean().item() > 0.3
    # and what is exported is a plain conv graph: nothing that per-tensor int8 cannot hold
    path = tmp_path / "student.onnx"
    from edge_model.train_edgenext import export

    export(student, crops, np.arange(len(crops)), path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= {"Conv", "Add", "Gelu", "Slice", "Split", "Concat", "ReduceMean", "Flatten", "Gemm", "Reshape"}, ops
    assert "Gelu" in ops and not ops & {"LayerNormalization", "MatMul", "Softmax", "Erf", "Div"}


def _random_student(seed: int = 0) -> ex.EdgeNeXt:
    """A student-form network with arbitrary affines and one stream channel 40x the others."""
    torch.manual_seed(seed)
    model = ex.EdgeNeXt(ex.EdgeNeXtConfig(form="student", embedding_size=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.5)
        for stage in model.stages:
            for block in stage.blocks:
                block.gamma.copy_(0.1 + torch.rand(block.gamma.shape, generator=g))
        model.stages[2].blocks[4].mlp.fc2.bias[7] = 40.0  # an outlier channel, as trained students grow
    return model.eval()


def test_folding_and_equalising_compute_the_same_function():
    model = _random_student()
    x = torch.randn(3, 3, 112, 112)
    folded = ex.fold(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(b.mix is None for _, _, b in ex.block_list(folded) if isinstance(b, ex.SplitBlock))  # in fc1 now
    equal = ex.equalise(folded, [torch.randn(4, 3, 112, 112)])
    with torch.no_grad():
        ref, a, b = model(x), folded(x), equal(x)
    torch.testing.assert_close(a, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b, ref, atol=1e-3, rtol=1e-3)
    # the outlier channel no longer sets the stream's range
    peaks = {}
    for name, net in (("folded", folded), ("equal", equal)):
        h = net.stages[2].blocks[4].register_forward_hook(lambda m, i, o, name=name: peaks.__setitem__(name, o.abs().amax((0, 2, 3))))
        with torch.no_grad():
            net(x)
        h.remove()
    ratio = {k: (v.max() / v.median()).item() for k, v in peaks.items()}
    assert ratio["folded"] > 20 and ratio["equal"] < 2


def test_pruning_takes_the_cheapest_units_and_keeps_the_rest(crops):
    model = _random_student(1)
    batches = [student_input(_rgb(crops), 112)]
    full = ex.folded_macs(model)
    pruned = ex.prune_hidden(model, batches, full - 2_000_000)
    assert full - 2_000_000 - 40_000 <= ex.folded_macs(pruned) <= full - 2_000_000
    for (i, j, a), (_, _, b) in zip(ex.block_list(model), ex.block_list(pruned)):
        assert b.mlp.fc1.out_channels == pruned.config.hidden[i][j] <= a.mlp.fc1.out_channels
        assert b.mlp.fc1.out_channels >= 8
    x = batches[0]
    with torch.no_grad():
        assert F.cosine_similarity(model(x), pruned(x)).mean().item() > 0.9


def test_the_targets_of_a_view_are_the_teachers_outputs_on_that_view():
    torch.manual_seed(0)
    teacher = ex.EdgeNeXt().eval()
    student = ex.EdgeNeXt(ex.EdgeNeXtConfig(form="student", embedding_size=16))
    basis = torch.linalg.qr(torch.randn(512, 16))[0].t()
    recipe = ViewRecipe(batch_size=4, mixup=0.5, cutmix=0.3, aug_strength=1.0, student_size=112)
    trainer = Trainer(student, teacher, basis, optimiser([student], 1e-4, 0.0), recipe)
    seen = {"teacher": [], "student": []}
    teacher.stem.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))
    student.stem.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone()))
    crops = torch.randint(0, 256, (8, 112, 112, 3), dtype=torch.uint8)
    view = draw_view(crops, torch.arange(8), recipe, torch.Generator().manual_seed(0), np.random.default_rng(0))
    before = [p.detach().clone() for p in student.parameters()]
    trainer.step(view, 1e-4)
    assert torch.equal(seen["teacher"][0], teacher_input(view))
    assert torch.equal(seen["student"][0], student_input(view, 112))
    assert not torch.allclose(view, crops[:4].flip(-1).permute(0, 3, 1, 2).float())  # a real augmented view
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(p.grad is None for p in teacher.parameters())


def test_qat_simulation_strips_back_to_the_network_it_wrapped():
    from edge_model.qat import calibrate, fake_quantisers

    folded = ex.fold(_random_student(2))
    x = torch.randn(2, 3, 112, 112)
    q = ex.prepare_qat(folded)
    calibrate(q, [x])
    assert len(fake_quantisers(q)) > 40
    with torch.no_grad():
        assert F.cosine_similarity(q.eval()(x), folded(x)).min().item() > 0.9  # rounded, not broken
    plain = ex.strip_qat(q)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), folded(x))


def test_qat_trains_an_equalised_network_in_its_natural_scale():
    """Adam steps are about the learning rate per weight: the trained tensors are the un-equalised ones."""
    from edge_model.qat import calibrate

    folded = ex.fold(_random_student(2))
    x = torch.randn(2, 3, 112, 112)
    equal = ex.equalise(folded, [x])
    q = ex.prepare_qat(equal, natural=folded)
    calibrate(q, [x])
    trained = {n.replace(".parametrizations", "").replace(".original", ""): p for n, p in q.named_parameters()}
    natural = dict(folded.named_parameters())
    assert trained.keys() == natural.keys()
    outlier = "stages.2.blocks.4.mlp.fc2.bias"  # the planted outlier channel, divided by equalise
    assert not torch.allclose(dict(equal.named_parameters())[outlier], natural[outlier])
    for name, p in trained.items():
        torch.testing.assert_close(p, natural[name], rtol=1e-5, atol=1e-6)
    plain = ex.strip_qat(q)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), equal(x), rtol=1e-4, atol=1e-4)
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, dict(equal.named_parameters())[name], rtol=1e-5, atol=1e-6)


def test_qat_trains_on_the_grid_post_training_conversion_will_pick():
    """Ranges are the calibration crops' min/max (the converter's rule) and training does not move them."""
    from edge_model.qat import calibrate, fake_quantisers

    torch.manual_seed(0)
    folded = ex.fold(_random_student(2))
    calibration = [torch.randn(2, 3, 112, 112)]
    q = ex.prepare_qat(folded)
    calibrate(q, calibration)
    ranges = [(a.lo.item(), a.hi.item()) for a in fake_quantisers(q)]
    stem = q.stem[0].act_quant
    with torch.no_grad():
        out = folded.stem[0](calibration[0])
    # (the simulation's stem has int8-rounded weights, hence approx)
    assert (stem.lo.item(), stem.hi.item()) == pytest.approx((out.min().item(), out.max().item()), rel=2e-3)
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    loss = q(3 * torch.randn(2, 3, 112, 112)).pow(2).mean()
    loss.backward()
    opt.step()
    assert [(a.lo.item(), a.hi.item()) for a in fake_quantisers(q)] == ranges
    calibrate(q, calibration)  # what the trainer does every --recalibrate-every steps
    assert [(a.lo.item(), a.hi.item()) for a in fake_quantisers(q)] != ranges  # the weights moved


@needs_edgeface
def test_a_stage_starts_from_edgeface_and_the_next_resumes_under_qat(tmp_path):
    from click.testing import CliRunner

    from edge_model.train_edgenext import command, load_stage

    out = tmp_path / "run"
    common = [str(FACES), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--steps", "2",
              "--batch-size", "4", "--heldout", "0.34", "--eval-every", "1", "--threads", "2"]
    first = CliRunner().invoke(command, common, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert (out / "student.onnx").is_file()
    curve = json.loads((out / "curve.json").read_text())
    assert [c["stage"] for c in curve] == [1] and curve[0]["steps"] == 2 and curve[0]["macs"] <= 39_500_000
    assert "heldout_cos_edgeface" in curve[0]["before"]
    second = CliRunner().invoke(command, common + ["--resume", str(out / "checkpoints" / "stage-1.pt"), "--qat",
                                                   "--no-export"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    curve = json.loads((out / "curve.json").read_text())
    assert [c["stage"] for c in curve] == [1, 2] and curve[1]["qat"] is True
    assert curve[1]["qat_teacher"] == "float" and curve[1]["hint_weight"] == 1.0  # its own float's stage outputs
    model, basis, record = load_stage(out / "checkpoints" / "stage-2.pt")
    assert record["stage"] == 2 and model.config.form == "folded" and basis.shape == (512, 512)
    assert not hasattr(model, "qat")
    assert count_macs(model)["macs"] <= 39_500_000


def test_the_readout_is_cut_to_the_teachers_principal_subspace_not_the_students():
    torch.manual_seed(0)
    student = ex.EdgeNeXt(ex.EdgeNeXtConfig(form="student", embedding_size=32))
    # the teacher's embeddings live in an 8-D subspace of its 32-D space
    span = torch.linalg.qr(torch.randn(32, 8))[0]
    reference = torch.randn(500, 8) @ span.t()
    cut, basis = ex.principal_readout(student, reference, 8)
    assert basis.shape == (8, 32) and cut.config.embedding_size == 8 and cut.head.fc.out_features == 8
    kept = (F.normalize(reference, dim=1) @ basis.t()).norm(dim=1)
    assert kept.min().item() > 0.999  # every teacher embedding lies in the kept directions
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), student(x) @ basis.t(), atol=1e-4, rtol=1e-4)


def test_every_figure_of_the_training_record_comes_from_its_reports():
    """The README's CFP rows are the committed eval reports' numbers and its stage rows the curve's."""
    folder = ROOT / "models" / "student-edgenext"
    readme = (folder / "README.md").read_text()
    reports = sorted((folder / "eval").glob("*/*/report.json"))
    assert len(reports) >= 2
    for path in reports:
        for model in json.loads(path.read_text())["models"]:
            acc, tar = model["accuracy"], model["tar_at_far"]["0.001"]["tar"]
            assert f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}" in readme, f"{path} {model['name']}"
            assert f"{100 * tar:.2f}" in readme, f"{path} {model['name']} TAR"
    curves = [folder / "curve.json", folder / "qat" / "curve.json"]
    for record in [r for c in curves for r in json.loads(c.read_text())]:
        row = (f"| {record['stage']} | {record['steps']} | {record['minutes']:.1f} | "
               f"{record['heldout_cos_edgeface']:.3f} | {record['train_cos_edgeface']:.3f} |")
        assert row in readme, row


def test_the_committed_stage_converts_to_full_int8_and_stays_close_to_float(tmp_path, crops):
    """The exported graph is one the converter quantises whole (every op int8), and on real faces the INT8
    bundle stays near the float student (the committed stage: 0.92 mean cosine on 32 training crops)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    from click.testing import CliRunner

    from edge_model.cli import main
    from edge_model.train_edgenext import export, load_stage

    model, _, _ = load_stage(ROOT / "models" / "student-edgenext" / "checkpoints" / "stage-1.pt")
    onnx_path = tmp_path / "student.onnx"
    export(model, crops, np.arange(len(crops)), onnx_path)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["convert", str(onnx_path), "--quant", "int8", "--color", "rgb", "--mean",
                                       "127.5", "--std", "128", "--calib", str(FACES), "--calib-count", "6",
                                       "--seed", "0", "--out", str(out), "--licence", "test", "--name", "s",
                                       "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "int8" and manifest["embedding_size"] == 512
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out / manifest["file"]))
    kinds = {d["dtype"].__name__ for d in interp.get_tensor_details()}
    assert kinds == {"int8", "int32"}, kinds  # int8 activations and weights, int32 biases: no op left in float
    assert manifest["verification"]["cosine_mean"] > 0.85
