"""``edge-model eval``: face-verification accuracy of one or two embedders through the device's full pipeline.

Every unique image of the protocol goes through exactly what the door runs:
``load_image`` -> YuNet (``models/yunet``) -> largest face -> ``align_face`` ->
embedder (small images are upsampled first, as :func:`edge_model.crops.crop_largest_face`
does).  Embeddings are cached per image in memory, so an image named by many
pairs, or scored by two models, is detected and aligned once.

Detection failures: a pair where either image has no usable face cannot be
scored.  It stays in every denominator; in the 10-fold accuracy it counts as
**wrong**, in TAR/FAR it counts as **rejected** (a door that finds no face
stays shut); see :mod:`edge_model.metrics`.  The report gives their number
and also the accuracy over scorable pairs only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import click
import numpy as np

from edge.bundle import load_bundle
from edge.cli import boundary
from edge.detect import YuNetDetector
from edge.embedder import Embedder
from edge.errors import EdgeError
from edge.images import load_image
from edge_model import metrics
from edge_model.backends import describe, open_embedder
from edge_model.crops import DEFAULT_DETECTOR, crop_largest_face
from edge_model.protocols import PROTOCOLS, Pair, load_protocol

log = logging.getLogger(__name__)

FARS = (1e-2, 1e-3)
MAX_LISTED_FAILURES = 50


class FacePipeline:
    """Image file -> aligned crop of its largest face, with the calibration tool's detector settings."""

    def __init__(self, detector_bundle: Path = DEFAULT_DETECTOR, score_threshold: float = 0.6,
                 min_face_size: int = 16) -> None:
        bundle = load_bundle(detector_bundle, expect_kind="detector")
        self.detector = YuNetDetector(bundle, score_threshold=score_threshold, min_face_size=min_face_size)
        self.settings = {"detector": bundle.model_id, "score_threshold": score_threshold,
                         "min_face_size": min_face_size}

    def crop(self, path: Path, sizes: Sequence[int]) -> tuple[dict[int, np.ndarray] | None, str]:
        """{size: crop} for the largest face, or (None, reason)."""
        try:
            image = load_image(path)
        except EdgeError as exc:
            return None, f"unreadable: {exc}"
        crop = crop_largest_face(image, self.detector, 112)
        if crop is None:
            return None, "no face"
        out = {112: crop}
        for size in sizes:
            if size != 112:
                # re-run at the embedder's size so the template is scaled, not the pixels
                out[size] = crop_largest_face(image, self.detector, size)
        return out, ""


@dataclass
class EmbeddingCache:
    """Embeddings of unique images for each model; NaN rows where no face was found."""

    paths: list[Path]
    embeddings: list[np.ndarray]  # one (N, D) array per model
    failures: dict[Path, str] = field(default_factory=dict)

    def index(self) -> dict[Path, int]:
        return {path: i for i, path in enumerate(self.paths)}


def embed_images(paths: Sequence[Path], embedders: Sequence[Embedder], pipeline: FacePipeline,
                 batch: int = 64, progress: bool = True) -> EmbeddingCache:
    """Run the full pipeline once per image and every embedder on each crop."""
    from tqdm import tqdm

    paths = list(dict.fromkeys(Path(p) for p in paths))
    sizes = sorted({int(e.input_size) for e in embedders})
    out = [np.full((len(paths), e.embedding_size), np.nan, dtype=np.float32) for e in embedders]
    failures: dict[Path, str] = {}
    pending: list[tuple[int, dict[int, np.ndarray]]] = []

    def flush() -> None:
        if not pending:
            return
        rows = [i for i, _ in pending]
        for m, embedder in enumerate(embedders):
            size = int(embedder.input_size)
            out[m][rows] = embedder.embed(np.stack([crops[size] for _, crops in pending]))
        pending.clear()

    with tqdm(total=len(paths), desc="detect+align+embed", unit="img", disable=not progress,
              file=sys.stderr) as bar:
        for i, path in enumerate(paths):
            crops, reason = pipeline.crop(path, sizes)
            if crops is None or any(crops.get(s) is None for s in sizes):
                failures[path] = reason or "no face at the embedder's size"
            else:
                pending.append((i, crops))
                if len(pending) >= batch:
                    flush()
            bar.update(1)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)
        flush()
    return EmbeddingCache(paths, out, failures)


def pair_distances(pairs: Sequence[Pair], cache: EmbeddingCache, model: int) -> np.ndarray:
    index = cache.index()
    a = cache.embeddings[model][[index[p.path_a] for p in pairs]]
    b = cache.embeddings[model][[index[p.path_b] for p in pairs]]
    return metrics.l2_distance(a, b)


def model_report(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """Every figure for one model on one protocol."""
    valid = ~np.isnan(distances)
    report: dict = {}
    if len(set(folds.tolist())) >= 2:
        report["accuracy"] = metrics.kfold_accuracy(distances, same, folds)
        report["accuracy_scorable_pairs"] = metrics.kfold_accuracy(distances[valid], same[valid], folds[valid])
    else:
        threshold, accuracy = metrics.best_threshold(distances, same)
        report["accuracy"] = {"mean": accuracy, "std": None, "folds": 1,
                              "note": "one fold only: threshold chosen on the same pairs (optimistic)"}
    threshold, accuracy = metrics.best_threshold(distances, same)
    report["best_threshold"] = {"l2": threshold, "accuracy": accuracy,
                                "note": "chosen on all pairs (not cross-validated)"}
    report["tar_at_far"] = {f"{far:g}": metrics.tar_at_far(distances, same, far) for far in FARS}
    far, tar, _ = metrics.roc_points(distances, same)
    report["auc"] = metrics.auc(far, tar)
    genuine, impostor = distances[same & valid], distances[~same & valid]
    report["distances"] = {
        "genuine_mean": float(genuine.mean()) if genuine.size else None,
        "impostor_mean": float(impostor.mean()) if impostor.size else None,
    }
    return report


def cross_model_cosine(cache: EmbeddingCache, first: int = 0, second: int = 1) -> dict:
    """Per-face cosine between two models' embeddings of the same crops."""
    a, b = cache.embeddings[first], cache.embeddings[second]
    if a.shape[1] != b.shape[1]:
        return {"note": f"embedding sizes differ ({a.shape[1]} vs {b.shape[1]}): not comparable"}
    valid = ~np.isnan(a).any(axis=1) & ~np.isnan(b).any(axis=1)
    cos = metrics.cosine(a[valid], b[valid])
    if cos.size == 0:
        return {"faces": 0}
    return {"faces": int(cos.size), "mean": float(cos.mean()), "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)), "p5": float(np.percentile(cos, 5)),
            "median": float(np.median(cos))}


def write_figures(out: Path, names: list[str], all_distances: list[np.ndarray], same: np.ndarray,
                  title: str) -> list[str]:
    """roc.png (TAR vs FAR, log FAR) and distances.png (genuine vs impostor L2 histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, distances in zip(names, all_distances):
        far, tar, _ = metrics.roc_points(distances, same)
        keep = far > 0
        ax.plot(far[keep], tar[keep], label=name)
    for far_mark in FARS:
        ax.axvline(far_mark, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(left=max(1.0 / max(int((~same).sum()), 1), 1e-5), right=1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC: {title}")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    written.append("roc.png")

    fig, axes = plt.subplots(len(names), 1, figsize=(6, 2.8 * len(names)), squeeze=False)
    bins = np.linspace(0, 2, 81)
    for ax, name, distances in zip(axes[:, 0], names, all_distances):
        valid = ~np.isnan(distances)
        ax.hist(distances[same & valid], bins=bins, alpha=0.6, label="genuine", color="tab:green")
        ax.hist(distances[~same & valid], bins=bins, alpha=0.6, label="impostor", color="tab:red")
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_xlabel("L2 distance between unit embeddings")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "distances.png", dpi=110)
    plt.close(fig)
    written.append("distances.png")
    return written


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def open_model(path: Path, threads: int = 2) -> Embedder:
    """:func:`edge_model.backends.open_embedder`, except for a bare float ONNX the model tool knows by sha256
    (:data:`edge_model.sources.KNOWN_FILES`, kind embedder, e.g. EdgeFace-XXS): that one is run through
    onnxruntime with its own input convention (:data:`edge_model.convert.KNOWN_INPUTS`), where OpenCV's DNN
    and SFace's preprocessing would not do (OpenCV cannot load EdgeFace's CumSum; it wants (x - 127.5) / 127.5)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        from edge.bundle import sha256_file
        from edge.embedder import OnnxRuntimeEmbedder
        from edge_model.convert import KNOWN_INPUTS
        from edge_model.sources import KNOWN_FILES

        sha = sha256_file(path)
        known = next((k for k, info in KNOWN_FILES.items() if info["sha256"] == sha), None)
        if known in KNOWN_INPUTS and KNOWN_FILES[known].get("kind") == "embedder":
            spec = {"width": 112, "height": 112, "channels": 3, "layout": "NCHW", "dtype": "float32",
                    **KNOWN_INPUTS[known]}
            return OnnxRuntimeEmbedder(path, threads=threads, input_spec=spec)
    return open_embedder(path, threads)


def evaluate(models: Sequence[Path], protocol: str, root: Path, pairs_file: Path | None, out: Path | None,
             threads: int = 2, detector: Path = DEFAULT_DETECTOR, progress: bool = True,
             embedders: Sequence[Embedder] | None = None) -> dict:
    """Run the evaluation and return the report (and write it with figures under ``out``)."""
    started = time.time()
    pairs = load_protocol(protocol, root, pairs_file)
    if embedders is None:
        embedders = [open_model(m, threads) for m in models]
    pipeline = FacePipeline(detector)
    images = [p for pair in pairs for p in (pair.path_a, pair.path_b)]
    cache = embed_images(images, embedders, pipeline, progress=progress)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    failed_pairs = sum(1 for p in pairs if p.path_a in cache.failures or p.path_b in cache.failures)
    names = [Path(m).name or str(m) for m in models]
    if len(set(names)) < len(names):
        names = [f"{name} [{i + 1}]" for i, name in enumerate(names)]
    all_distances = [pair_distances(pairs, cache, m) for m in range(len(embedders))]
    report = {
        "protocol": protocol,
        "root": str(root),
        "pairs_file": str(pairs_file) if pairs_file else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pairs": len(pairs),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "folds": len(set(folds.tolist())),
        "images": len(cache.paths),
        "pipeline": {**pipeline.settings, "aligner": "edge.align.align_face (5-point similarity, 112 template)",
                     "upsample_below": "shorter side < 200 px (edge_model.crops)", "largest_face": True},
        "detection": {
            "failed_images": len(cache.failures),
            "failed_pairs": failed_pairs,
            "convention": "a pair with no usable face in either image counts as WRONG in the k-fold "
                          "accuracy and as REJECTED in TAR/FAR; it stays in every denominator",
            "failed_examples": [f"{_display(p, root)}: {r}" for p, r in
                                list(cache.failures.items())[:MAX_LISTED_FAILURES]],
        },
        "models": [],
    }
    for name, model, embedder, distances in zip(names, models, embedders, all_distances):
        entry = {"name": name, **describe(embedder)}
        entry.update(model_report(distances, same, folds))
        report["models"].append(entry)
    if len(embedders) == 2:
        report["cosine_between_models"] = cross_model_cosine(cache)
    report["seconds"] = round(time.time() - started, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report["figures"] = write_figures(out, names, all_distances, same, protocol)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def summary(report: dict) -> str:
    lines = [f"{report['protocol']}: {report['pairs']} pairs ({report['genuine_pairs']} same / "
             f"{report['impostor_pairs']} different), {report['folds']} folds, {report['images']} images",
             f"detection failures: {report['detection']['failed_images']} images, "
             f"{report['detection']['failed_pairs']} pairs (counted wrong in accuracy, rejected in TAR)"]
    for model in report["models"]:
        acc = model["accuracy"]
        std = f" ± {acc['std'] * 100:.2f}" if acc.get("std") is not None else ""
        tars = ", ".join(f"TAR@FAR={k} {v['tar'] * 100:.2f}%" for k, v in model["tar_at_far"].items())
        lines.append(f"  {model['name']}: accuracy {acc['mean'] * 100:.2f}{std} %, {tars}, "
                     f"best-accuracy threshold L2 {model['best_threshold']['l2']:.4f}, AUC {model['auc']:.4f}")
    cos = report.get("cosine_between_models")
    if cos and "mean" in cos:
        lines.append(f"  cosine between models over {cos['faces']} faces: mean {cos['mean']:.4f}, "
                     f"p1 {cos['p1']:.4f}, min {cos['min']:.4f}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), required=True,
              help="Pair protocol: LFW pairs.txt layout or CFP frontal-frontal / frontal-profile.")
@click.option("--root", type=click.Path(path_type=Path), required=True,
              help="LFW: image folder (<root>/<name>/<name>_0001.jpg); CFP: the folder holding Protocol/.")
@click.option("--pairs", "pairs_file", type=click.Path(path_type=Path), default=None,
              help="LFW pairs.txt (default <root>/pairs.txt).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.json, roc.png and distances.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--threads", default=2, show_default=True, help="Inference threads per model.")
@click.option("--detector", type=click.Path(path_type=Path), default=DEFAULT_DETECTOR, show_default=True,
              help="Detector bundle.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@boundary
def command(models, protocol, root, pairs_file, out, as_json, threads, detector, no_progress):
    """Verification accuracy of MODEL [MODEL2] (bundle folders or float .onnx files).

    Reports 10-fold accuracy (threshold chosen on the other nine folds), TAR at
    FAR 1e-2 and 1e-3, detection failures and, with two models, the per-face
    cosine between their embeddings.
    """
    if len(models) > 2:
        raise click.UsageError("give one model, or two to compare")
    report = evaluate(list(models), protocol.lower(), root, pairs_file, out, threads, detector,
                      progress=not no_progress)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(summary(report))
        if out is not None:
            click.echo(f"report and figures in {out}")
