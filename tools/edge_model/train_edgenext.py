"""``edge-model train-edgenext``: EdgeFace-XXS made INT8-friendly and distilled back into itself.

The Inception student flattened at about 94 % on CFP-FF after five CPU stages (models/student-wide): its
weights know far less than EdgeFace's, and CPU stages cannot teach 40k faces what WebFace taught.  This
student starts from EdgeFace-XXS's own weights instead (:func:`edge_model.edgenext.student_from_edgeface`:
LayerNorms and attention replaced by fitted INT8-friendly stand-ins, MLPs pruned to the MAC budget,
the readout kept at 512-D or cut to its principal subspace), and every step teaches it back EdgeFace's function on exactly the view it sees:

- feature hints: each of the four stage outputs against EdgeFace's (MSE over the teacher's energy) - the
  student keeps EdgeFace's shapes, so every stage has a dense target;
- the direct term: 1 - cosine to EdgeFace's embedding (in the student's principal subspace when ``--dim`` cuts it);
- the relational term: the in-batch similarity matrix against EdgeFace's full 512-D one.

``--qat`` runs a stage with full-INT8 rounding simulated on the exported (folded, equalised) network
(:func:`edge_model.edgenext.prepare_qat`), on the grid the converter will ship (ranges re-taken as min/max
over clean crops every ``--recalibrate-every`` steps), trained in the un-equalised scale.  By default it
learns from its own float network (stage outputs and embedding on the same view, ``--qat-teacher float``):
taught by EdgeFace instead, a QAT stage came closer to EdgeFace yet scored 0.35 CFP-FF points lower in INT8.
Stages resume from committed checkpoints like ``train-consistent``'s; ``OUT/curve.json`` gets one record per
stage.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.cli import boundary

from . import edgenext as ex
from .student import INPUT_STD, count_macs
from .train_consistent import ViewRecipe, append_curve, draw_view, relational_loss, student_input
from .train_student import (
    _lr_schedule,
    clean_view,
    heldout_split,
    optimiser,
    seed_everything,
    set_learning_rate,
)

log = logging.getLogger(__name__)

CONVERT_CALIBRATION = 300  # crops edge-model convert calibrates on by default
MAX_MACS = 39_500_000  # the 40M with room for the ops count_macs does not see (adds, GELU, mean)


def teacher_input(view: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 NCHW -> EdgeFace's (x - 127.5) / 127.5."""
    return (view - 127.5) / ex.TEACHER_STD


def stage_outputs(model: ex.EdgeNeXt, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The four stage outputs and the raw embedding."""
    out = []
    x = model.stem(model.input_site(x))
    for stage in model.stages:
        x = stage.blocks(stage.downsample(x))
        out.append(x)
    pooled = x.mean((2, 3), keepdim=True)
    return out, model.head.fc(torch.flatten(model.head.norm(pooled), 1))


def hint_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    return sum(((s - t) ** 2).mean() / (t ** 2).mean() for s, t in zip(student, teacher)) / len(teacher)


@dataclass
class Trainer:
    """One optimiser step on a view: the targets are the teacher's output on that same view."""

    model: ex.EdgeNeXt
    teacher: ex.EdgeNeXt
    basis: torch.Tensor  # (128, 512): the student's embedding space inside EdgeFace's
    opt: torch.optim.Optimizer
    recipe: ViewRecipe
    hint_weight: float = 1.0
    rel_weight: float = 2.0
    teacher_std: float = ex.TEACHER_STD  # the teacher's input is (view - 127.5) / teacher_std

    def targets(self, view: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            return stage_outputs(self.teacher, (view - 127.5) / self.teacher_std)

    def loss(self, view: torch.Tensor) -> torch.Tensor:
        t_feats, t_emb = self.targets(view)
        x = student_input(view, self.recipe.student_size)
        if self.hint_weight > 0:
            s_feats, s_emb = stage_outputs(self.model, x)
            hint = hint_loss(s_feats, t_feats)
        else:
            s_emb, hint = self.model(x), torch.zeros(())
        direct = 1 - F.cosine_similarity(s_emb, F.normalize(t_emb, dim=1) @ self.basis.t()).mean()
        rel = relational_loss(s_emb, t_emb)
        return self.hint_weight * hint + direct + self.rel_weight * rel

    def step(self, view: torch.Tensor, lr: float) -> float:
        self.model.train()
        for m in self.model.modules():  # the affines keep their fitted statistics (frozen BatchNorm)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        set_learning_rate(self.opt, lr)
        loss = self.loss(view)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        return loss.item()


# ------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embeddings(model: ex.EdgeNeXt, crops: torch.Tensor, batch: int = 200) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(student_input(clean_view(crops[i:i + batch], 112), 112))
                     for i in range(0, len(crops), batch)])
    model.train(was)
    return F.normalize(out.float(), dim=1)


@dataclass
class EvalSet:
    name: str
    crops: torch.Tensor
    teacher: torch.Tensor  # EdgeFace's normalised 512-D embedding of each clean crop


@torch.no_grad()
def figures(model: ex.EdgeNeXt, basis: torch.Tensor, sets: list[EvalSet]) -> dict:
    """Per set: cosine to EdgeFace (in the student's subspace when it is cut), and the similarity-matrix MSE to
    EdgeFace's full embedding (the same figure ``train-consistent`` reports as rel_mse_edgeface)."""
    out = {}
    for s in sets:
        emb = embeddings(model, s.crops)
        out[f"{s.name}_cos_edgeface"] = round(float(F.cosine_similarity(emb, s.teacher @ basis.t()).mean()), 5)
        out[f"{s.name}_rel_mse_edgeface"] = round(float(relational_loss(emb, s.teacher)), 6)
    return out


def eval_sets(crops: np.ndarray, held: np.ndarray, fit: np.ndarray, teacher: ex.EdgeNeXt) -> list[EvalSet]:
    sets = []
    for name, idx in (("heldout", held), ("train", fit)):
        if len(idx):
            sub = torch.from_numpy(crops[idx])
            with torch.no_grad():
                t = torch.cat([teacher.embed(teacher_input(clean_view(sub[i:i + 200], 112)))
                               for i in range(0, len(sub), 200)])
            sets.append(EvalSet(name, sub, t))
    return sets


# ------------------------------------------------------------------------------------ checkpoints


def save_stage(path: Path, model: ex.EdgeNeXt, basis: torch.Tensor, record: dict) -> None:
    """fp16 weights of the plain network (a QAT stage's simulation stripped), the basis, the record."""
    model = ex.strip_qat(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"family": "edgenext", "config": model.config.to_dict(),
                "model": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                "basis": basis.half(), "record": record}, path)


def load_stage(path: Path) -> tuple[ex.EdgeNeXt, torch.Tensor, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("family") != "edgenext":
        raise click.ClickException(f"{path}: not a train-edgenext checkpoint")
    model = ex.EdgeNeXt(ex.EdgeNeXtConfig.from_dict(ckpt["config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    return model.eval(), ckpt["basis"].float(), ckpt.get("record", {})


def calibration_inputs(crops: np.ndarray, idx: np.ndarray, n: int, seed: int, spec_std: float) -> list[torch.Tensor]:
    """Clean training crops as normalised input batches (``spec_std``: EdgeFace's 127.5 or the student's 128)."""
    pick = np.sort(np.random.default_rng(seed).choice(idx, min(n, len(idx)), replace=False))
    return [(clean_view(torch.from_numpy(crops[pick[i:i + 128]]), 112) - 127.5) / spec_std
            for i in range(0, len(pick), 128)]


def export(model: ex.EdgeNeXt, crops: np.ndarray, train_idx: np.ndarray, path: Path, seed: int = 0) -> None:
    """Folded and equalised on clean training crops (unless a QAT stage did both already), to ONNX at opset
    20: there GELU is one ``Gelu`` node (TFLite's GELU builtin); at 13 it is an Erf subgraph whose 0.5
    onnxsim folds into the next conv, which no longer matches :func:`edge_model.onnx_prepare.find_gelus`."""
    plain = ex.strip_qat(model).eval()
    if plain.config.form == "student":
        folded = ex.equalise(ex.fold(plain), calibration_inputs(crops, train_idx, 256, seed, INPUT_STD))
    else:  # a QAT stage's network, equalised before it trained: equalising again would move its grid
        folded = plain
    from .student import export_onnx

    export_onnx(folded, path, 20)


# ----------------------------------------------------------------------------------------- a stage


@dataclass
class StageOptions:
    steps: int = 100_000
    lr: float = 5e-4
    max_minutes: float | None = None
    eval_every: int = 200
    seed: int = 0
    history: list[dict] = field(default_factory=list)
    recalibrate: Callable[[], None] | None = None  # QAT: re-take the activation ranges
    recalibrate_every: int = 50


def run_stage(trainer: Trainer, crops: torch.Tensor, train_idx: torch.Tensor, sets: list[EvalSet],
              opts: StageOptions) -> dict:
    gen = torch.Generator().manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed + 1)
    started = time.time()
    lr_at = _lr_schedule(opts.lr, opts.steps, min(50, max(1, opts.steps // 20)), opts.max_minutes, 0.0, started)
    step, running = 0, 0.0
    while step < opts.steps:
        running += trainer.step(draw_view(crops, train_idx, trainer.recipe, gen, rng), lr_at(step))
        step += 1
        if opts.recalibrate is not None and step % opts.recalibrate_every == 0:
            opts.recalibrate()
        if step % opts.eval_every == 0:
            entry = {"step": step, "loss": round(running / opts.eval_every, 5),
                     "minutes": round((time.time() - started) / 60, 2), **figures(trainer.model, trainer.basis, sets)}
            opts.history.append(entry)
            click.echo(json.dumps(entry))
            sys.stdout.flush()
            running = 0.0
        if opts.max_minutes and time.time() - started > 60 * opts.max_minutes:
            break
    return {"steps": step, "minutes": round((time.time() - started) / 60, 2),
            **figures(trainer.model, trainer.basis, sets)}


def start_student(teacher: ex.EdgeNeXt, crops: np.ndarray, train_idx: np.ndarray, max_macs: int, dim: int,
                  seed: int, calibration: int = 1024) -> tuple[ex.EdgeNeXt, torch.Tensor]:
    """EdgeFace made INT8-friendly (:func:`edge_model.edgenext.student_from_edgeface`), fitted on training crops."""
    batches = calibration_inputs(crops, train_idx, calibration, seed, ex.TEACHER_STD)
    return ex.student_from_edgeface(teacher, batches, max_macs, dim, INPUT_STD)


@click.command("train-edgenext")
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("build/student-edgenext"), show_default=True,
              help="checkpoints/stage-K.pt, curve.json, history-stage-K.json, student.onnx.")
@click.option("--teacher", "teacher_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="EdgeFace-XXS ONNX (default: ../shared/models/edgeface-xxs).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A stage checkpoint to continue from (the next stage number, a fresh schedule).")
@click.option("--max-macs", default=MAX_MACS, show_default=True, help="MAC budget of the exported network (start only).")
@click.option("--dim", default=512, show_default=True,
              help="Embedding width (start only): 512 keeps EdgeFace's space; less cuts it to its principal subspace.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/crops"), show_default=True)
@click.option("--limit", type=int, default=None, help="At most this many images (sampled with --seed).")
@click.option("--heldout", default=0.01, show_default=True)
@click.option("--split-seed", default=1, show_default=True, help="Keep fixed across the stages of one model.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--steps", default=100_000, show_default=True)
@click.option("--max-minutes", type=float, default=None)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--hint-weight", default=1.0, show_default=True, help="Stage-output hints (0 under --qat).")
@click.option("--rel-weight", default=2.0, show_default=True)
@click.option("--mixup", default=0.15, show_default=True)
@click.option("--cutmix", default=0.1, show_default=True)
@click.option("--aug-strength", default=0.8, show_default=True)
@click.option("--eval-every", default=200, show_default=True)
@click.option("--qat", is_flag=True, help="Train the exported network with full-INT8 rounding simulated.")
@click.option("--qat-teacher", type=click.Choice(["float", "edgeface"]), default="float", show_default=True,
              help="Under --qat: what the rounded network learns from - its own float network (stage outputs "
                   "and embedding, hints kept) or EdgeFace (embedding terms only).")
@click.option("--recalibrate-every", default=50, show_default=True,
              help="Under --qat: steps between re-taking the activation ranges (min/max over clean crops).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--no-export", is_flag=True)
@boundary
def command(roots, out_dir, teacher_path, resume, max_macs, dim, cache_dir, limit, heldout, split_seed, batch_size,
            steps, max_minutes, lr, hint_weight, rel_weight, mixup, cutmix, aug_strength, eval_every, qat,
            qat_teacher, recalibrate_every, seed, threads, no_export):
    """Distil EdgeFace-XXS into its INT8-friendly self, one resumable stage per run."""
    from .crops import build_crops
    from .onnx_teacher import EDGEFACE_XXS
    from .qat import calibrate

    if not roots:
        raise click.UsageError("give ROOTS (folders of face images)")
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    crops = build_crops(list(roots), 112, limit, seed, cache_dir).crops
    held, train_idx = heldout_split(len(crops), heldout, split_seed)
    fit = train_idx[:: max(1, len(train_idx) // max(len(held), 1))][:max(len(held), 1)]
    teacher = ex.edgeface_from_onnx(teacher_path or EDGEFACE_XXS)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if resume is not None:
        model, basis, record = load_stage(resume)
        stage = int(record.get("stage", 0)) + 1
    else:
        model, basis = start_student(teacher, crops, train_idx, max_macs, dim, seed)
        stage = 1
    macs = ex.folded_macs(model) if model.config.form == "student" else count_macs(model)["macs"]
    params = count_macs(ex.fold(model) if model.config.form == "student" else model)["params"]
    click.echo(f"stage {stage}: {len(crops)} crops ({len(held)} held out); exported network {macs / 1e6:.2f}M MACs, "
               f"{params / 1e6:.3f}M params, {model.config.embedding_size}-D")
    learn_from, learn_std = teacher, ex.TEACHER_STD
    if qat:
        natural = None
        if model.config.form == "student":
            natural = ex.fold(model)
            model = ex.equalise(natural, calibration_inputs(crops, train_idx, 256, seed, INPUT_STD))
        float_model = model.eval()  # prepare_qat works on a copy: this stays the float network
        model = ex.prepare_qat(model, natural)
        calibration = calibration_inputs(crops, train_idx, CONVERT_CALIBRATION, seed, INPUT_STD)
        calibrate(model, calibration)
        if qat_teacher == "float":
            for p in float_model.parameters():
                p.requires_grad_(False)
            learn_from, learn_std = float_model, INPUT_STD
        else:
            hint_weight = 0.0  # the folded, equalised streams are scaled per channel: no longer EdgeFace's
    model = model.to(memory_format=torch.channels_last)
    recipe = ViewRecipe(batch_size, mixup, cutmix, aug_strength, 112)
    trainer = Trainer(model, learn_from, basis, optimiser([model], lr, 5e-5), recipe, hint_weight, rel_weight,
                      learn_std)
    sets = eval_sets(crops, held, fit, teacher)
    before = figures(model, basis, sets)
    click.echo(f"before: {json.dumps(before)}")
    opts = StageOptions(steps=steps, lr=lr, max_minutes=max_minutes, eval_every=eval_every, seed=seed + stage)
    if qat:
        opts.recalibrate = lambda: calibrate(trainer.model, calibration)
        opts.recalibrate_every = recalibrate_every
    result = run_stage(trainer, torch.from_numpy(crops), torch.from_numpy(train_idx), sets, opts)
    record = {"stage": stage, "start": str(resume or "EdgeFace-XXS (edge_model.edgenext.student_from_edgeface)"),
              "crops": len(crops), "heldout": len(held), "batch_size": batch_size, "lr": lr, "qat": qat,
              "qat_teacher": qat_teacher if qat else None,
              "hint_weight": hint_weight, "rel_weight": rel_weight, "macs": macs, "params": params,
              "before": before, **result, "command": " ".join(sys.argv[1:])}
    save_stage(out_dir / "checkpoints" / f"stage-{stage}.pt", trainer.model, basis, record)
    (out_dir / f"history-stage-{stage}.json").write_text(json.dumps(opts.history, indent=1))
    append_curve(out_dir / "curve.json", record)
    click.echo(f"stage {stage}: {json.dumps(record)}")
    if not no_export:
        export(trainer.model.cpu().to(memory_format=torch.contiguous_format), crops, train_idx, out_dir / "student.onnx", seed)
        click.echo(f"exported {out_dir / 'student.onnx'}")
