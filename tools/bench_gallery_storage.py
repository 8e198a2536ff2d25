"""Does storing gallery embeddings as int8 (128 bytes) instead of float32 (512 bytes) cost accuracy?

    .venv/bin/python tools/bench_gallery_storage.py [--root ../shared/faces/train/celeba_wild] [--limit 800]

Embeds labelled training faces with the shipped embedder, stores them both
ways through the gallery's own encode/decode, and prints the largest change in
any pairwise L2 distance and the verification accuracy at the best threshold
for each storage type (all genuine pairs, an equal number of impostor pairs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bundle import load_bundle  # noqa: E402
from edge.embedder import TFLiteEmbedder  # noqa: E402
from edge.gallery import decode_embedding, encode_embedding  # noqa: E402
from edge.matcher import l2_distances  # noqa: E402
from edge_model.crops import build_crops  # noqa: E402


def best_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    candidates = np.unique(np.r_[genuine, impostor])
    best = (0.0, 0.0)
    for t in candidates[:: max(1, len(candidates) // 2000)]:
        acc = ((genuine <= t).sum() + (impostor > t).sum()) / (len(genuine) + len(impostor))
        best = max(best, (acc, t))
    return best


@click.command()
@click.option("--root", default=str(ROOT.parent / "shared" / "faces" / "train" / "celeba_wild"), show_default=True)
@click.option("--embedder", "bundle_path", default=str(ROOT / "models" / "sface-int8"), show_default=True)
@click.option("--limit", default=800, show_default=True)
def main(root, bundle_path, limit):
    """Compare float32 and int8 gallery storage on labelled faces."""
    crops = build_crops([Path(root)], limit=limit, seed=1, cache_dir=ROOT / ".cache" / "crops", progress=False)
    labelled = [i for i, ident in enumerate(crops.identities) if ident]
    embedder = TFLiteEmbedder(load_bundle(bundle_path), threads=2)
    emb = np.concatenate([embedder.embed(crops.crops[labelled][i : i + 32]) for i in range(0, len(labelled), 32)])
    ids = np.array([crops.identities[i] for i in labelled])
    stored = {}
    for dtype in ("float32", "int8"):
        stored[dtype] = np.stack([decode_embedding(*_enc(v, dtype)) for v in emb])
    dist = {k: l2_distances(v, v) for k, v in stored.items()}
    iu = np.triu_indices(len(emb), 1)
    same = (ids[:, None] == ids[None, :])[iu]
    rng = np.random.default_rng(0)
    click.echo(f"{len(emb)} faces, {len(set(ids))} identities, {same.sum()} genuine pairs")
    click.echo(f"bytes per sample: float32 {len(encode_embedding(emb[0], 'float32')[0])}, int8 {len(encode_embedding(emb[0], 'int8')[0])}")
    delta = np.abs(dist["float32"] - dist["int8"])[iu]
    click.echo(f"pairwise L2 change: max {delta.max():.5f}, mean {delta.mean():.5f}")
    imp_idx = rng.choice(np.flatnonzero(~same), size=min(int(same.sum()) * 5, int((~same).sum())), replace=False)
    for dtype, d in dist.items():
        flat = d[iu]
        acc, thr = best_accuracy(flat[same], flat[imp_idx])
        click.echo(f"{dtype:8s} best accuracy {acc * 100:.3f}% at L2 {thr:.3f}")


def _enc(vector, dtype):
    blob, scale = encode_embedding(vector, dtype)
    return blob, dtype, vector.size, scale


if __name__ == "__main__":
    main()
