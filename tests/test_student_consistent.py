"""The consistent-teacher trainer: targets on the student's own view, Net2Net widening, the shipped
student read back from its TFLite, and a stage that resumes from committed weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edge_model.student import Student, StudentConfig  # noqa: E402
from edge_model.student_init import SHIPPED_TFLITE, fc_readout, stream_map, widen  # noqa: E402
from edge_model.train_consistent import (  # noqa: E402
    Trainer,
    ViewRecipe,
    consistent_loss,
    draw_view,
    projection_head,
    relational_loss,
    student_input,
)
from edge_model.train_student import READOUT_FAN_IN, optimiser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "fixtures" / "faces"
TINY = dict(input_size=32, stem=8, stem_out=16, stages=[(32, 1), (32, 1), (64, 1)], head=64)


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


class RecordingTeacher:
    """A fake teacher: remembers every batch it was shown and embeds it with a fixed random map."""

    def __init__(self, dim: int = 24) -> None:
        self.seen: list[torch.Tensor] = []
        self.proj = torch.randn(3, dim, generator=torch.Generator().manual_seed(1))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean(dim=(2, 3)) @ self.proj + 0.01


def test_the_target_of_a_view_is_the_teachers_output_on_that_view():
    torch.manual_seed(0)
    model = Student(StudentConfig(**TINY))
    teacher = RecordingTeacher()
    proj = projection_head(model.config.embedding_size, 24)
    recipe = ViewRecipe(batch_size=6, mixup=0.5, cutmix=0.3, aug_strength=1.0, student_size=32)
    trainer = Trainer(model, proj, teacher, optimiser([model, proj], 1e-3, 0.0),
                      recipe)
    seen_by_student: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, args: seen_by_student.append(args[0].detach().clone()))
    crops = torch.randint(0, 256, (10, 112, 112, 3), dtype=torch.uint8)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    view = draw_view(crops, torch.arange(10), recipe, gen, rng)
    trainer.step(view, 1e-3)
    assert len(teacher.seen) == 1 and len(seen_by_student) == 1
    assert torch.equal(teacher.seen[0], view)  # the teacher saw the augmented, mixed view itself
    assert torch.allclose(student_input(teacher.seen[0], 32), seen_by_student[0])  # and so did the student
    # not the clean crops: the view really is augmented
    assert not torch.allclose(view, crops[:6].flip(-1).permute(0, 3, 1, 2).float())


def test_relational_loss_compares_across_dimensions_and_projection_gives_a_direct_term():
    torch.manual_seed(0)
    s, t = torch.randn(8, 128), torch.randn(8, 512)
    assert relational_loss(s, t).item() > 0
    assert relational_loss(t[:, :128], t[:, :128]).item() == pytest.approx(0.0, abs=1e-7)
    proj = projection_head(128, 512)
    with_direct = consistent_loss(s, t, proj, 2.0, 1.0)
    without = consistent_loss(s, t, None, 2.0, 1.0)  # 128 vs 512: no direct term without a head
    assert with_direct.item() > without.item()
    assert without.item() == pytest.approx(2.0 * relational_loss(s, t).item())


@pytest.mark.parametrize("target", [
    dict(TINY, stem=16, stem_out=24, stages=[(32, 2), (32, 1), (128, 2)], head=96),
    dict(input_size=112, stages=[(64, 2), (128, 3), (256, 2)]),
])
def test_widening_is_function_preserving(target):
    base_cfg = StudentConfig(**TINY) if target["input_size"] == 32 else StudentConfig()
    base = _random_bn(Student(base_cfg))
    wide = widen(base, StudentConfig(**target), seed=3)
    x = torch.randn(4, 3, base_cfg.input_size, base_cfg.input_size)
    with torch.no_grad():
        cos = F.cosine_similarity(base(x), wide(x))
    assert cos.min().item() > 0.999
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in base.parameters())


def test_the_fc_readout_keeping_every_channel_computes_the_same_function():
    base = _random_bn(Student(StudentConfig(**TINY)))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fc = fc_readout(base, head=64, batches=[x])
    assert fc.config.readout == "fc" and fc.gdc is None and fc.fc.in_features == 64 * 2 * 2
    with torch.no_grad():
        torch.testing.assert_close(fc(x), base(x), rtol=1e-4, atol=1e-4)


def test_a_trimmed_fc_readout_is_refitted_towards_the_old_embedding():
    base = _random_bn(Student(StudentConfig(**TINY)), seed=2)
    for m in base.modules():  # shifted up so that few ReLU6 channels are dead and trimming loses something
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data += 0.5
    gen = torch.Generator().manual_seed(1)
    fit, check = torch.randn(600, 3, 32, 32, generator=gen), torch.randn(64, 3, 32, 32, generator=gen)
    refitted = fc_readout(base, head=8, batches=fit.split(128))
    anchored = fc_readout(base, head=8, batches=fit.split(128), ridge=1e9)  # the composite of the kept channels
    with torch.no_grad():
        want = base(check)
        spread = want.var(0).mean().item()
        gap_refit = (refitted(check) - want).pow(2).mean().item()
        gap_anchored = (anchored(check) - want).pow(2).mean().item()
    assert refitted.head[0].out_channels == 8 and refitted.fc.in_features == 8 * 2 * 2
    assert gap_anchored > 0.1 * spread  # keeping 8 of 64 channels loses a good part of the embedding
    assert gap_refit < 0.3 * gap_anchored  # and the refit on held-out inputs wins most of it back


def test_the_fc_readout_buys_parameters_inside_the_mac_budget():
    from edge_model.student import count_macs

    gdc = count_macs(Student(StudentConfig(stages=[(64, 2), (128, 3), (256, 2)])))
    fc = count_macs(Student(StudentConfig(stages=[(64, 2), (128, 3), (256, 2)], head=368, readout="fc")))
    assert fc["macs"] <= 40e6 and 1e6 <= fc["params"] <= 3e6
    assert fc["params"] > 5 * gdc["params"]
    with pytest.raises(ValueError, match="readout"):
        StudentConfig(readout="gap")
    with pytest.raises(ValueError, match="GDC readout"):
        widen(Student(StudentConfig(**dict(TINY, readout="fc"))), StudentConfig(**dict(TINY, readout="fc")))


def test_widening_refuses_layouts_that_do_not_nest():
    with pytest.raises(ValueError, match="do not nest"):
        stream_map(128, 136, torch.Generator())


def _fixture_crops():
    from edge_model.crops import build_crops

    return build_crops([FACES], size=112, cache_dir=None, progress=False).crops


def test_shipped_student_read_back_from_its_tflite_matches_it():
    pytest.importorskip("tensorflow")
    from edge_model.student_init import student_from_tflite
    from edge_model.train_consistent import calibration_batch

    crops = _fixture_crops()
    x = calibration_batch(crops)
    model = student_from_tflite(SHIPPED_TFLITE, calibration=x)
    with torch.no_grad():
        ours = model(x)
    theirs = _tflite_embeddings(SHIPPED_TFLITE, x)
    assert F.cosine_similarity(ours, theirs).min().item() > 0.99


def _tflite_embeddings(path: Path, x: torch.Tensor) -> torch.Tensor:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (s, z), (so, zo) = inp["quantization"], out["quantization"]
    interp.resize_tensor_input(inp["index"], [len(x), 112, 112, 3])
    interp.allocate_tensors()
    q = np.clip(np.round(x.permute(0, 2, 3, 1).numpy() / s + z), -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    return torch.from_numpy((interp.get_tensor(out["index"]).astype(np.float32) - zo) * so)


def test_a_stage_starts_from_the_committed_weights_and_the_next_resumes(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from click.testing import CliRunner

    from edge_model import train_consistent
    from edge_model.train_consistent import command, load_stage

    # a tiny fake 512-D teacher instead of EdgeFace, and no SFace: the stage mechanics are under test
    class FakeTeacher(RecordingTeacher):
        path = Path("fake.onnx")

    monkeypatch.setattr("edge_model.onnx_teacher.teacher_from_option", lambda value: FakeTeacher(512))
    monkeypatch.setattr(train_consistent, "export_onnx", lambda model, path: None)
    out = tmp_path / "run"
    common = [str(FACES), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--steps", "2",
              "--batch-size", "4", "--heldout", "0.34", "--no-sface", "--eval-every", "1"]
    first = CliRunner().invoke(command, common, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "TFLite read back" in first.output
    curve = json.loads((out / "curve.json").read_text())
    assert [c["stage"] for c in curve] == [1] and curve[0]["steps"] == 2
    # before any step the student is the shipped one: figures are recorded at the start
    assert "heldout_rel_mse_edgeface" in curve[0]["before"]
    second = CliRunner().invoke(command, common + ["--resume", str(out / "checkpoints" / "stage-1.pt")],
                                catch_exceptions=False)
    assert second.exit_code == 0, second.output
    curve = json.loads((out / "curve.json").read_text())
    assert [c["stage"] for c in curve] == [1, 2]
    model, proj, record = load_stage(out / "checkpoints" / "stage-2.pt")
    assert record["stage"] == 2 and proj is not None and proj.weight.shape == (512, 128)
    assert model.config == StudentConfig()
    # a new run grows the fc readout from a stage: the head trimmed, the readout refitted on training crops
    third = CliRunner().invoke(command, common + ["--out", str(tmp_path / "fc"), "--widen-from",
                                                  str(out / "checkpoints" / "stage-2.pt"), "--readout", "fc",
                                                  "--head", "16"], catch_exceptions=False)
    assert third.exit_code == 0, third.output
    model, _, record = load_stage(tmp_path / "fc" / "checkpoints" / "stage-1.pt")
    assert (model.config.readout, model.config.head, model.fc.in_features) == ("fc", 16, 16 * 7 * 7)
    assert record["start"].endswith("stage-2.pt")


def test_a_new_projection_head_starts_at_the_least_squares_fit():
    from edge_model.train_consistent import fit_projection

    torch.manual_seed(0)
    s = torch.randn(400, 16)
    true = torch.randn(16, 64)
    t = F.normalize(s, dim=1) @ true
    proj = fit_projection(projection_head(16, 64), s, t, ridge=1e-6)
    assert F.cosine_similarity(proj(F.normalize(s, dim=1)), t).min().item() > 0.999


def test_a_smaller_input_keeps_every_weight_and_the_gdc_sum():
    from edge_model.student_init import resample_input

    base = _random_bn(Student(StudentConfig(**TINY)))
    same = resample_input(base, 32)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), base(x))
    small = resample_input(base, 16)
    assert base.gdc[0].kernel_size == (2, 2)
    assert small.config.input_size == 16 and small.gdc[0].kernel_size == (1, 1)
    old, new = base.state_dict(), small.state_dict()
    for name, tensor in old.items():
        if name != "gdc.0.weight":
            assert torch.equal(new[name], tensor), name
    torch.testing.assert_close(new["gdc.0.weight"].sum(dim=(2, 3)), old["gdc.0.weight"].sum(dim=(2, 3)))
    # then widened at the new size like any other start
    wide = widen(small, StudentConfig(**{**TINY, "input_size": 16, "stages": [(32, 2), (32, 1), (128, 2)], "head": 96}), seed=1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert F.cosine_similarity(small(x), wide(x)).min().item() > 0.999


def test_every_cfp_figure_of_the_training_record_is_in_its_readme():
    """The student-wide README's CFP rows are the committed eval reports' numbers, not retyped ones."""
    folder = ROOT / "models" / "student-wide"
    readme = (folder / "README.md").read_text()
    reports = sorted((folder / "eval").glob("*/*.json"))
    assert len(reports) >= 4
    for path in reports:
        for model in json.loads(path.read_text())["models"]:
            acc = model["accuracy"]
            figure = f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"
            assert figure in readme, f"{path.relative_to(folder)} {model['name']}: {figure}"


def test_the_view_pool_stores_each_teachers_output_on_its_own_pixels(tmp_path, monkeypatch):
    """SFace (real, from the package) and a second teacher embed exactly the stored uint8 views, drawn
    from the training crops only; a second build with the same inputs reads the cache."""
    from edge_model import view_pool
    from edge_model.view_pool import build_pool, sface_teacher

    crops = _fixture_crops()
    train_idx = np.arange(len(crops) - 1)  # the last crop is held out
    recipe = ViewRecipe(batch_size=4, mixup=0.3, cutmix=0.3, aug_strength=1.0)
    other = RecordingTeacher(16)
    pool = build_pool(crops, train_idx, recipe, 5, seed=3, teachers={"edgeface": other, "sface": sface_teacher()},
                      cache_dir=tmp_path, progress=False)
    assert pool.views.dtype == torch.uint8 and pool.views.shape == (5, 3, 112, 112)
    assert torch.equal(torch.cat(other.seen), pool.views.float())
    sface = sface_teacher()
    for i in range(5):
        again = sface(pool.views[i:i + 1].float())
        assert F.cosine_similarity(again, pool.targets["sface"][i:i + 1]).item() > 0.9999
    # the views are augmented views, not the clean crops or their mirrors
    clean = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float()
    both = torch.cat([clean, clean.flip(-1)])
    nearest = (pool.views.float()[:, None] - both[None]).abs().mean(dim=(2, 3, 4)).min(dim=1).values
    assert nearest.max().item() > 2.0
    monkeypatch.setattr(view_pool, "draw_pool", lambda *a, **k: pytest.fail("the cached pool was redrawn"))
    cached = build_pool(crops, train_idx, recipe, 5, seed=3, teachers={"edgeface": other, "sface": sface},
                        cache_dir=tmp_path, progress=False)
    assert torch.equal(cached.views, pool.views)
    torch.testing.assert_close(cached.targets["sface"], pool.targets["sface"])


def test_a_wide_linear_readout_steps_at_a_rate_scaled_by_its_fan_in():
    torch.manual_seed(0)
    model = Student(StudentConfig(**dict(TINY, head=512, readout="fc")))  # fc fan-in 512 x 2 x 2
    proj = projection_head(model.config.embedding_size, 24)
    opt = optimiser([model, proj], 1e-3, 5e-5)
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(scales) == len(list(model.parameters())) + len(list(proj.parameters()))  # every one, once
    assert scales[id(model.fc.weight)] == READOUT_FAN_IN / 2048 and scales[id(proj.weight)] == 1.0
    assert {g["weight_decay"] for g in opt.param_groups if g["params"][0].ndim == 1} == {0.0}

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(model, proj, RecordingTeacher(), opt, ViewRecipe(batch_size=4, student_size=32))
    view = draw_view(torch.randint(0, 256, (6, 112, 112, 3), dtype=torch.uint8), torch.arange(6), trainer.recipe,
                     torch.Generator().manual_seed(0), np.random.default_rng(0))
    trainer.step(view, 1e-3)
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    # Adam's first step moves each weight by about its group's rate, whatever the gradient's size
    assert moved["fc.weight"] == pytest.approx(1e-3 * READOUT_FAN_IN / 2048, rel=0.05)
    assert moved["head.0.weight"] == pytest.approx(1e-3, rel=0.05)


def test_a_step_with_pool_views_trains_on_those_pixels_against_the_fused_similarity():
    from edge_model.train_consistent import pool_loss
    from edge_model.view_pool import ViewPool, fused_similarity

    torch.manual_seed(0)
    a, b = torch.randn(6, 24), torch.randn(6, 10)
    na, nb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    torch.testing.assert_close(fused_similarity({"edgeface": a, "sface": b}), (na @ na.t() + nb @ nb.t()) / 2)
    # with one teacher the pool term is the ordinary consistent loss
    s = torch.randn(6, 8)
    proj = projection_head(8, 24)
    torch.testing.assert_close(pool_loss(s, {"edgeface": a}, proj, 2.0, 1.0), consistent_loss(s, a, proj, 2.0, 1.0))

    model = Student(StudentConfig(**TINY))
    teacher = RecordingTeacher()
    recipe = ViewRecipe(batch_size=4, student_size=32)
    trainer = Trainer(model, proj := projection_head(model.config.embedding_size, 24), teacher,
                      optimiser([model, proj], 1e-3, 0.0), recipe)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    pool = ViewPool(torch.randint(0, 256, (7, 3, 112, 112), dtype=torch.uint8),
                    {"edgeface": torch.randn(7, 24), "sface": torch.randn(7, 10)})
    views, targets = pool.batch(3, torch.Generator().manual_seed(0))
    view = draw_view(torch.randint(0, 256, (5, 112, 112, 3), dtype=torch.uint8), torch.arange(5), recipe,
                     torch.Generator().manual_seed(1), np.random.default_rng(1))
    trainer.step(view, 1e-3, (views, targets))
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], view)  # the pool views need no teacher run
    assert torch.allclose(seen[0][4:], student_input(views, 32))
    rows = [int(np.flatnonzero([torch.equal(v, p.float()) for p in pool.views])[0]) for v in views]
    torch.testing.assert_close(targets["sface"], pool.targets["sface"][rows])


def test_a_qat_stage_is_saved_as_the_folded_float_network_it_simulated(tmp_path):
    from edge_model.qat import fake_quantisers, strip_qat
    from edge_model.train_consistent import load_stage, save_stage, start_qat

    crops = _fixture_crops()
    base = _random_bn(Student(StudentConfig(**{**TINY, "input_size": 112})))
    qat = start_qat(base, crops, np.arange(len(crops)), n=len(crops))
    quants = fake_quantisers(qat)
    assert quants and all(bool(q.seen) and q.hi > q.lo for q in quants)  # ranges set from real crops
    x = student_input(torch.from_numpy(crops).flip(-1).permute(0, 3, 1, 2).float(), 112)
    with torch.no_grad():
        simulated, plain = qat.eval()(x), base(x)
        # rounding is simulated, but the network is still the one it started from
        assert not torch.equal(simulated, plain)
        assert F.cosine_similarity(simulated, plain).min().item() > 0.95
    save_stage(tmp_path / "stage-3.pt", qat, None, {"stage": 3})
    loaded, proj, record = load_stage(tmp_path / "stage-3.pt")
    assert record["stage"] == 3 and proj is None and not isinstance(loaded.bn, nn.BatchNorm1d)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), strip_qat(qat)(x), atol=2e-2, rtol=2e-2)  # fp16 storage
