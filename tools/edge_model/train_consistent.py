"""``edge-model train-consistent``: a patient, consistent teacher for the student, in resumable stages.

Every step the teacher (EdgeFace-XXS through onnxruntime by default, :mod:`edge_model.onnx_teacher`)
embeds exactly the view the student sees - the mirrored, mixed (mixup or cutmix) and door-camera
augmented crop - instead of the clean crop's cached embedding ("a good teacher is patient and
consistent", Beyer et al. 2022).  Loss: a relational term (MSE between the in-batch cosine-similarity
matrices, which compares a 128-D student with a 512-D teacher) plus, with ``--proj-weight``, 1 - cosine
between the teacher and a learned linear projection of the student (training only, never exported).
With ``--sface-pool N`` each step also trains on views of a fixed pool that SFace and EdgeFace embedded
once (:mod:`edge_model.view_pool`), against the two teachers' fused similarity: SFace is too slow to
embed fresh views here, and the ensemble is the stronger teacher.

Training starts from what is committed, so a fresh machine loses nothing: the shipped INT8 student read
back in float (:func:`edge_model.student_init.student_from_tflite`), widened function-preservingly to
``--stages``/``--head`` (:func:`edge_model.student_init.widen`), or ``--resume`` a stage checkpoint.
Each stage runs up to ``--max-minutes``, writes ``OUT/checkpoints/stage-K.pt`` (fp16 weights) and
appends its figures to ``OUT/curve.json``: steps, minutes, and the cosine to each teacher on clean
training and held-out crops.  On a GPU the same command runs with a larger ``--batch-size``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.cli import boundary

from .qat import calibrate, prepare_qat, strip_qat
from .student import READOUTS, Student, StudentConfig, count_macs, export_onnx, fold_batchnorm
from .train_student import (
    QAT_CALIBRATION_CROPS,
    _lr_schedule,
    augment,
    clean_view,
    crops_to_rgb,
    heldout_split,
    optimiser,
    parse_stages,
    seed_everything,
    set_learning_rate,
    to_student_input,
)
from .view_pool import ViewPool, build_pool, fused_similarity, sface_teacher, similarity_matrix

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ views


def mix_views(x: torch.Tensor, mixup: float, cutmix: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a ``mixup`` fraction of a batch by pixel blends of two faces (30-70 %) and a ``cutmix``
    fraction by a face with a rectangle of another pasted in; the teacher embeds the result."""
    n, dev = x.shape[0], x.device
    partner = x[torch.randperm(n, generator=gen, device=dev)]
    r = torch.rand(n, generator=gen, device=dev)
    blend = (r < mixup).view(n, 1, 1, 1)
    paste = ((r >= mixup) & (r < mixup + cutmix))
    lam = (0.3 + 0.4 * torch.rand(n, generator=gen, device=dev)).view(n, 1, 1, 1)
    out = torch.where(blend, lam * x + (1 - lam) * partner, x)
    if paste.any():
        out = torch.where(paste.view(n, 1, 1, 1) & _boxes(n, x.shape[-1], gen, dev), partner, out)
    return out


def _boxes(n: int, side: int, gen: torch.Generator, dev) -> torch.Tensor:
    """(N, 1, S, S) masks of random rectangles covering 15-50 % of each side."""
    h = (0.15 + 0.35 * torch.rand(n, generator=gen, device=dev)) * side
    w = (0.15 + 0.35 * torch.rand(n, generator=gen, device=dev)) * side
    y0 = torch.rand(n, generator=gen, device=dev) * (side - h)
    x0 = torch.rand(n, generator=gen, device=dev) * (side - w)
    ys = torch.arange(side, device=dev).view(1, -1, 1)
    xs = torch.arange(side, device=dev).view(1, 1, -1)
    mask = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + h).view(-1, 1, 1))
            & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + w).view(-1, 1, 1)))
    return mask[:, None]


@dataclass
class ViewRecipe:
    batch_size: int = 128
    mixup: float = 0.15
    cutmix: float = 0.1
    aug_strength: float = 0.8
    student_size: int = 112


def draw_view(crops: torch.Tensor, train_idx: torch.Tensor, recipe: ViewRecipe, gen: torch.Generator,
              rng: np.random.Generator) -> torch.Tensor:
    """One training view at the teacher's 112x112: random crops, mirrored half the time, mixed,
    door-camera augmented (shift/scale/rotation jitter as alignment errors, photometry, blur, noise,
    IR-like, occlusion, JPEG).  RGB 0..255 NCHW."""
    dev = crops.device
    idx = train_idx[torch.randint(len(train_idx), (recipe.batch_size,), generator=gen, device=dev)]
    x = crops_to_rgb(crops[idx])
    mirror = torch.rand(len(idx), generator=gen, device=dev) < 0.5
    x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
    x = mix_views(x, recipe.mixup, recipe.cutmix, gen)
    return augment(x, x.shape[-1], gen, rng, recipe.aug_strength)


def student_input(view: torch.Tensor, size: int) -> torch.Tensor:
    """The student's input for a teacher-sized view: area-resized to its side, normalised, channels-last."""
    if view.shape[-1] != size:
        view = F.interpolate(view, size=(size, size), mode="area")
    return to_student_input(view).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------- losses


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the in-batch cosine-similarity matrices: any two embedding sizes compare."""
    return F.mse_loss(similarity_matrix(student), similarity_matrix(teacher))


def direct_loss(student: torch.Tensor, teacher: torch.Tensor, proj: nn.Module | None) -> torch.Tensor:
    """1 - cosine between the teacher and the (projected) student."""
    s = proj(student.float()) if proj is not None else student.float()
    return (1 - F.cosine_similarity(s, teacher.float(), dim=1)).mean()


def consistent_loss(student: torch.Tensor, teacher: torch.Tensor, proj: nn.Module | None, rel_weight: float,
                    direct_weight: float) -> torch.Tensor:
    loss = rel_weight * relational_loss(student, teacher)
    if direct_weight > 0 and (proj is not None or student.shape[1] == teacher.shape[1]):
        loss = loss + direct_weight * direct_loss(student, teacher, proj)
    return loss


def pool_loss(student: torch.Tensor, targets: dict[str, torch.Tensor], proj: nn.Module | None, rel_weight: float,
              direct_weight: float) -> torch.Tensor:
    """Pool views: similarity matrix against the teachers' fused one, plus the direct term to EdgeFace
    (the projection head's space) when it is among them."""
    loss = rel_weight * F.mse_loss(similarity_matrix(student), fused_similarity(targets))
    if direct_weight > 0 and "edgeface" in targets and proj is not None:
        loss = loss + direct_weight * direct_loss(student, targets["edgeface"], proj)
    return loss


def projection_head(student_dim: int, teacher_dim: int) -> nn.Linear:
    """Training-only linear map from the student's embedding to the teacher's space (not exported)."""
    return nn.Linear(student_dim, teacher_dim, bias=False)


@torch.no_grad()
def fit_projection(proj: nn.Linear, student: torch.Tensor, teacher: torch.Tensor, ridge: float = 1e-2) -> nn.Linear:
    """Start the head at the ridge least-squares map from the (normalised) student embeddings to the
    teacher's, so the direct term's first gradients do not pull a trained student towards a random map."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    gram = s.t() @ s + ridge * len(s) * torch.eye(s.shape[1])
    proj.weight.copy_(torch.linalg.solve(gram, s.t() @ t).t())
    return proj


# --------------------------------------------------------------------------------------- stepping


@dataclass
class Trainer:
    model: Student
    proj: nn.Module | None
    teacher: object  # RGB 0..255 NCHW -> (N, D)
    opt: torch.optim.Optimizer
    recipe: ViewRecipe
    rel_weight: float = 2.0
    direct_weight: float = 1.0
    freeze_bn: bool = True  # BatchNorm statistics as read back: training starts from the shipped function
    pool_weight: float = 1.0

    def params(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (list(self.proj.parameters()) if self.proj is not None else [])

    def step(self, view: torch.Tensor, lr: float, pool: tuple[torch.Tensor, dict] | None = None) -> float:
        """One optimiser step: the teacher's target is its output on ``view``, the student's input.

        ``pool`` adds views of a :class:`~edge_model.view_pool.ViewPool` with every teacher's stored
        output on exactly those pixels: their relational target is the ensemble's fused similarity."""
        target = self.teacher(view)
        self.model.train()
        if self.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        set_learning_rate(self.opt, lr)
        inputs = view if pool is None else torch.cat([view, pool[0]])
        emb = self.model(student_input(inputs, self.recipe.student_size))
        loss = consistent_loss(emb[:len(view)], target, self.proj, self.rel_weight, self.direct_weight)
        if pool is not None:
            loss = loss + self.pool_weight * pool_loss(emb[len(view):], pool[1], self.proj, self.rel_weight,
                                                       self.direct_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params(), 5.0)
        self.opt.step()
        return loss.item()


# ------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalSet:
    """Clean crops with each teacher's embedding of them (SFace's may be missing)."""

    name: str
    crops: torch.Tensor
    edgeface: torch.Tensor
    sface: torch.Tensor | None = None


@torch.no_grad()
def student_embeddings(model: Student, crops: torch.Tensor, size: int, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = [model(student_input(clean_view(crops[i:i + batch], 112), size)) for i in range(0, len(crops), batch)]
    model.train()
    return torch.cat(out).float()


@torch.no_grad()
def figures(model: Student, proj: nn.Module | None, sets: list[EvalSet], size: int) -> dict:
    """Per set: cosine to SFace (direct, same space as the shipped student), to EdgeFace through the
    projection head, and the relational (similarity-matrix) MSE to EdgeFace."""
    out: dict[str, float] = {}
    for s in sets:
        emb = student_embeddings(model, s.crops, size)
        out[f"{s.name}_rel_mse_edgeface"] = float(relational_loss(emb, s.edgeface))
        if proj is not None:
            out[f"{s.name}_cos_edgeface"] = float(F.cosine_similarity(proj(emb), s.edgeface).mean())
        if s.sface is not None:
            out[f"{s.name}_cos_sface"] = float(F.cosine_similarity(emb, s.sface).mean())
    return out


def sface_embeddings(crops: np.ndarray) -> np.ndarray | None:
    """SFace's embedding of clean crops (OpenCV DNN), or None where SFace is not installed."""
    try:
        from .teacher import default_teacher_path, teacher_embeddings_cv2

        return teacher_embeddings_cv2(default_teacher_path(), crops, progress=False)[:, 0]
    except Exception as exc:  # noqa: BLE001 - a missing optional teacher only drops one figure
        log.warning("no SFace figures: %s", exc)
        return None


def eval_sets(crops: np.ndarray, held: np.ndarray, fit: np.ndarray, teacher, with_sface: bool) -> list[EvalSet]:
    sets = []
    for name, idx in (("heldout", held), ("train", fit)):
        if len(idx) == 0:
            continue
        sub = torch.from_numpy(crops[idx])
        edge = teacher(crops_to_rgb(sub)).float()
        sface = sface_embeddings(crops[idx]) if with_sface else None
        sets.append(EvalSet(name, sub, edge, torch.from_numpy(sface) if sface is not None else None))
    return sets


# ------------------------------------------------------------------------------ starting weights


def calibration_batch(crops: np.ndarray, n: int = 256, seed: int = 0) -> torch.Tensor:
    idx = np.random.default_rng(seed).choice(len(crops), min(n, len(crops)), replace=False)
    return to_student_input(clean_view(torch.from_numpy(crops[np.sort(idx)]), 112))


def start_model(config: StudentConfig, crops: np.ndarray, widen_from: Path | None, seed: int,
                train_idx: np.ndarray) -> Student:
    """The shipped student (or ``widen_from``: a .tflite or stage checkpoint), widened to ``config``; a
    change to the fc readout comes last, its trimmed head refitted on the training crops ``train_idx``."""
    from .student_init import SHIPPED_TFLITE, fc_readout, resample_input, student_from_tflite, widen

    source = widen_from or SHIPPED_TFLITE
    if str(source).endswith(".tflite"):
        base = student_from_tflite(source, StudentConfig(), calibration_batch(crops, seed=seed))
    else:
        base = load_stage(source)[0]
    if base.config.input_size != config.input_size:
        base = resample_input(base, config.input_size)
    if config.readout == base.config.readout:
        return widen(base, config, seed) if base.config != config else base
    grown = dataclasses.replace(config, readout=base.config.readout, head=base.config.head)
    base = widen(base, grown, seed) if base.config != grown else base
    idx = np.sort(train_idx)  # never the held-out crops: they judge the stage
    batches = (student_input(clean_view(torch.from_numpy(crops[idx[i:i + 256]]), 112), config.input_size)
               for i in range(0, len(idx), 256))
    return fc_readout(base, config.head, batches)


def load_stage(path: Path) -> tuple[Student, nn.Module | None, dict]:
    """A stage checkpoint's student, projection head and record."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Student(StudentConfig.from_dict(ckpt["config"]))
    if ckpt.get("folded"):  # a QAT stage is saved as the folded float network it simulated
        model = fold_batchnorm(model)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    proj = None
    if ckpt.get("proj") is not None:
        w = ckpt["proj"]["weight"].float()
        proj = projection_head(w.shape[1], w.shape[0])
        proj.load_state_dict({"weight": w})
    return model, proj, ckpt.get("record", {})


def save_stage(path: Path, model: Student, proj: nn.Module | None, record: dict) -> None:
    """fp16 weights (half the bytes; training reloads them in fp32), the projection head, the record.
    A QAT network is saved without its simulation, BatchNorm folded."""
    model = strip_qat(model)
    folded = not isinstance(model.bn, nn.BatchNorm1d)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": half, "proj": {k: v.half() for k, v in proj.state_dict().items()} if proj is not None else None,
                "config": model.config.to_dict(), "folded": folded, "record": record}, path)


def start_qat(model: Student, crops: np.ndarray, train_idx: np.ndarray, n: int = QAT_CALIBRATION_CROPS,
              seed: int = 0) -> Student:
    """The student with full-INT8 rounding simulated, activation ranges calibrated on clean training crops
    as the converter's PTQ would set them."""
    model = prepare_qat(model)
    idx = np.sort(np.random.default_rng(seed).choice(train_idx, min(n, len(train_idx)), replace=False))
    size = model.config.input_size
    calibrate(model, (student_input(clean_view(torch.from_numpy(crops[idx[i:i + 64]]), 112), size)
                      for i in range(0, len(idx), 64)))
    return model


def append_curve(path: Path, record: dict) -> list[dict]:
    curve = json.loads(path.read_text()) if path.is_file() else []
    curve.append(record)
    path.write_text(json.dumps(curve, indent=1))
    return curve


# ----------------------------------------------------------------------------------------- a stage


@dataclass
class StageOptions:
    steps: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 5e-5
    max_minutes: float | None = None
    eval_every: int = 200
    seed: int = 0
    log_file: Path | None = None
    history: list[dict] = field(default_factory=list)
    pool_batch: int = 32


def run_stage(trainer: Trainer, crops: torch.Tensor, train_idx: torch.Tensor, sets: list[EvalSet],
              opts: StageOptions, pool: ViewPool | None = None) -> dict:
    """Steps until ``opts.steps`` or ``opts.max_minutes`` (the cosine schedule follows whichever is
    further along); returns steps, minutes and the final figures.  With ``pool``, every step also
    trains on ``opts.pool_batch`` of its views."""
    gen = torch.Generator().manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed + 1)
    started = time.time()
    lr_at = _lr_schedule(opts.lr, opts.steps, min(100, max(1, opts.steps // 50)), opts.max_minutes, 0.0, started)
    trainer.model.train()
    step, running = 0, 0.0
    while step < opts.steps:
        extra = pool.batch(opts.pool_batch, gen) if pool is not None and opts.pool_batch > 0 else None
        loss = trainer.step(draw_view(crops, train_idx, trainer.recipe, gen, rng), lr_at(step), extra)
        step += 1
        running += loss
        if step % opts.eval_every == 0:
            _log_progress(trainer, sets, opts, step, running / opts.eval_every, started)
            running = 0.0
        if opts.max_minutes and time.time() - started > 60 * opts.max_minutes:
            break
    return {"steps": step, "minutes": round((time.time() - started) / 60, 2),
            **figures(trainer.model, trainer.proj, sets, trainer.recipe.student_size)}


def _log_progress(trainer: Trainer, sets: list[EvalSet], opts: StageOptions, step: int, loss: float,
                  started: float) -> None:
    entry = {"step": step, "loss": round(loss, 5), "minutes": round((time.time() - started) / 60, 2),
             **figures(trainer.model, trainer.proj, sets, trainer.recipe.student_size)}
    opts.history.append(entry)
    click.echo(json.dumps(entry))
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------- CLI


def _config(stages: str | None, head: int | None, input_size: int, readout: str = "gdc") -> StudentConfig:
    config = StudentConfig(input_size=input_size, readout=readout)
    if stages:
        config.stages = parse_stages(stages)
    if head:
        config.head = head
    return config


def _load_crops(roots, limit: int | None, seed: int, cache_dir: Path) -> np.ndarray:
    from .crops import build_crops

    return build_crops(list(roots), 112, limit, seed, cache_dir).crops


def _initial(resume: Path | None, widen_from: Path | None, config: StudentConfig, crops: np.ndarray,
             train_idx: np.ndarray, seed: int, teacher_dim: int, want_proj: bool) -> tuple[Student, nn.Module | None, int]:
    """(student, projection head, stage number) to start this stage from."""
    if resume is not None:
        model, proj, record = load_stage(resume)
        stage = int(record.get("stage", 0)) + 1
    else:
        model, proj, stage = start_model(config, crops, widen_from, seed, train_idx), None, 1
    if want_proj and proj is None:
        proj = projection_head(model.config.embedding_size, teacher_dim)
        proj.fitted = False
    return model, proj, stage


def _fit_new_head(proj: nn.Module | None, model: Student, crops: np.ndarray, train_idx: np.ndarray, teacher,
                  n: int = 2048, seed: int = 0) -> None:
    """A head created for this stage starts at the least-squares fit on clean training crops."""
    if proj is None or getattr(proj, "fitted", True):
        return
    idx = np.sort(np.random.default_rng(seed).choice(train_idx, min(n, len(train_idx)), replace=False))
    sub = torch.from_numpy(crops[idx])
    fit_projection(proj, student_embeddings(model, sub, model.config.input_size), teacher(crops_to_rgb(sub)))


@click.command("train-consistent")
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/student-wide"),
              show_default=True, help="checkpoints/stage-K.pt, curve.json, history-stage-K.json, student.onnx.")
@click.option("--teacher", "teacher_opt", default="edgeface", show_default=True,
              help="edgeface, or a path to a teacher ONNX with EdgeFace's input spec (RGB, mean 127.5, std 127.5).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A stage checkpoint to continue from (the next stage number, a fresh schedule).")
@click.option("--widen-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from this student (.tflite read back, or a stage checkpoint) widened to --stages/--head "
                   "(default: the shipped models/student-int8 TFLite).")
@click.option("--stages", default=None, help="CHANNELSxBLOCKS,... of the (widened) student, e.g. 64x2,128x3,256x2.")
@click.option("--head", type=int, default=None, help="Channels of the 1x1 head before the GDC (default 512).")
@click.option("--readout", type=click.Choice(READOUTS), default="gdc", show_default=True,
              help="With --widen-from: 'fc' replaces the GDC readout by a linear layer over the whole last map, "
                   "the --head trimmed to fit the MACs and the readout refitted (edge_model.student_init.fc_readout).")
@click.option("--input-size", type=click.IntRange(48, 112), default=112, show_default=True,
              help="Side of the student's input; the 112 px view is area-resized to it, the teacher keeps 112. "
                   "A smaller input buys width at equal MACs (the start is resampled: not function-preserving).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/crops"), show_default=True)
@click.option("--limit", type=int, default=None, help="At most this many images (sampled with --seed).")
@click.option("--heldout", default=0.03, show_default=True)
@click.option("--split-seed", default=1, show_default=True, help="Keep fixed across the stages of one model.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--steps", default=100_000, show_default=True)
@click.option("--max-minutes", type=float, default=None)
@click.option("--lr", default=3e-4, show_default=True, help="Peak of the warm-up + cosine schedule; fine-tuning trained weights wants it small.")
@click.option("--rel-weight", default=2.0, show_default=True)
@click.option("--proj-weight", default=1.0, show_default=True, help="Direct cosine term through a projection head (0: none).")
@click.option("--mixup", default=0.15, show_default=True)
@click.option("--cutmix", default=0.1, show_default=True)
@click.option("--aug-strength", default=0.8, show_default=True)
@click.option("--eval-every", default=200, show_default=True)
@click.option("--sface-pool", type=click.IntRange(0), default=0, show_default=True,
              help="Views in a fixed pool embedded once by SFace and EdgeFace (cached in --cache-dir); each step "
                   "adds --pool-batch of them with the teachers' fused similarity as target. 0: no pool.")
@click.option("--pool-batch", type=click.IntRange(1), default=32, show_default=True)
@click.option("--pool-weight", default=1.0, show_default=True)
@click.option("--pool-seed", default=7, show_default=True, help="Seed of the pool's views (not the stage's).")
@click.option("--qat", is_flag=True, help="Quantisation-aware: train with the converter's INT8 rounding simulated "
              "(edge_model.qat); the checkpoint and ONNX are the folded float network, ready for PTQ.")
@click.option("--sface/--no-sface", default=True, show_default=True, help="Also report the cosine to SFace.")
@click.option("--bn", "bn_mode", type=click.Choice(["frozen", "batch"]), default="frozen", show_default=True,
              help="frozen: BatchNorm keeps its statistics (the start computes the shipped function); batch: "
                   "batch statistics, as the shipped student was first trained.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--no-export", is_flag=True)
@boundary
def command(roots, out_dir, teacher_opt, resume, widen_from, stages, head, readout, input_size, cache_dir, limit, heldout, split_seed,
            batch_size, steps, max_minutes, lr, rel_weight, proj_weight, mixup, cutmix, aug_strength, eval_every,
            sface_pool, pool_batch, pool_weight, pool_seed, qat, sface, bn_mode, seed, threads, no_export):
    """Distil a consistent teacher into the student, one resumable stage per run."""
    from .onnx_teacher import teacher_from_option

    if not roots:
        raise click.UsageError("give ROOTS (folders of face images)")
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    crops = _load_crops(roots, limit, seed, cache_dir)
    held, train_idx = heldout_split(len(crops), heldout, split_seed)
    fit = train_idx[:: max(1, len(train_idx) // max(len(held), 1))][:max(len(held), 1)]
    teacher = teacher_from_option(teacher_opt)
    teacher_dim = int(teacher(torch.zeros(1, 3, 112, 112)).shape[1])
    model, proj, stage = _initial(resume, widen_from, _config(stages, head, input_size, readout), crops, train_idx,
                                  seed, teacher_dim, proj_weight > 0)
    info = count_macs(model, model.config.input_size)
    click.echo(f"stage {stage}: {len(crops)} crops ({len(held)} held out); student {info['macs'] / 1e6:.2f}M MACs, "
               f"{info['params'] / 1e6:.3f}M params; teacher {teacher.path.name} ({teacher_dim}-D)")
    if qat:
        model = start_qat(model, crops, train_idx, seed=seed)
    _fit_new_head(proj, model, crops, train_idx, teacher, seed=seed)
    model = model.to(memory_format=torch.channels_last)
    recipe = ViewRecipe(batch_size, mixup, cutmix, aug_strength, model.config.input_size)
    trainer = Trainer(model, proj, teacher, optimiser([model, proj], lr, 5e-5), recipe, rel_weight, proj_weight,
                      bn_mode == "frozen", pool_weight)
    pool = None
    if sface_pool:
        pool = build_pool(crops, train_idx, recipe, sface_pool, pool_seed,
                          {"edgeface": teacher, "sface": sface_teacher()}, cache_dir)
        click.echo(f"view pool: {len(pool)} views, teachers {', '.join(pool.targets)}")
    sets = eval_sets(crops, held, fit, teacher, sface)
    before = figures(model, proj, sets, recipe.student_size)
    click.echo(f"before: {json.dumps(before)}")
    opts = StageOptions(steps=steps, lr=lr, max_minutes=max_minutes, eval_every=eval_every, seed=seed + stage,
                        pool_batch=pool_batch)
    result = run_stage(trainer, torch.from_numpy(crops), torch.from_numpy(train_idx), sets, opts, pool)
    record = {"stage": stage, "start": str(resume or widen_from or "models/student-int8 (TFLite read back)"),
              "crops": len(crops), "heldout": len(held), "batch_size": batch_size, "lr": lr,
              "teacher": teacher.path.name,
              "sface_pool": {"views": len(pool), "batch": pool_batch, "weight": pool_weight, "seed": pool_seed}
              if pool is not None else None, "qat": qat, "macs": info["macs"], "params": info["params"],
              "before": before, **result, "command": " ".join(sys.argv[1:])}
    save_stage(out_dir / "checkpoints" / f"stage-{stage}.pt", trainer.model, proj, record)
    (out_dir / f"history-stage-{stage}.json").write_text(json.dumps(opts.history, indent=1))
    append_curve(out_dir / "curve.json", record)
    click.echo(f"stage {stage}: {json.dumps(record)}")
    if not no_export:
        export_onnx(strip_qat(trainer.model.cpu()).to(memory_format=torch.contiguous_format), out_dir / "student.onnx")
        click.echo(f"exported {out_dir / 'student.onnx'}")
