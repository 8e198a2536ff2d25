"""``edge-model compare-liveness``: how far converted liveness bundles are from their float ONNX sources.

Quantisation moves a liveness model's real-face probability; what matters is
whether it moves a verdict.  For every image of every set: the largest face
(:func:`edge_model.crops.largest_face_box`, as calibration finds it), each
bundle's crop at its own scale (:func:`edge.liveness.liveness_crop`), the
bundle through the device's runtime (:class:`edge.liveness.LivenessModel`) and
its float source through onnxruntime on the very same crop.  Reported per model
and for the ensemble (the mean over the bundles given, upstream's rule):

* ``|dP(real)|``: max, mean and 95th percentile of the probability difference;
* arg-max flips: faces whose most likely class (per model) or the arg-max of
  the averaged softmax (ensemble: upstream's decision) is not the float one's;
* threshold flips: faces on the other side of ``--threshold`` (the door's
  ``liveness.threshold``, default 0.5) than with the float models;
* the share judged real by float and by converted models, and the bundles'
  per-crop invoke time on this host (1 thread unless ``--threads``).

The float source of a bundle is found by its manifest (``source_model.file``
under ``--source-dir``) and must match the recorded sha256.

    edge-model compare-liveness models/minifasnet-v2-fp16 models/minifasnet-v1se-fp16 --json out.json
"""

from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from edge.bundle import load_bundle, sha256_file
from edge.cli import boundary
from edge.errors import ModelError, ModelIntegrityError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DEFAULT_SOURCES = SHARED / "models" / "minifasnet"
DEFAULT_SETS = (
    f"upstream={SHARED / 'models' / 'minifasnet' / 'samples' / '*.jpg'}",
    f"cfp-frontal={SHARED / 'faces' / 'eval' / 'cfp' / 'Data' / 'Images' / '*' / 'frontal' / '*.jpg'}",
)


@dataclass
class ConvertedAndSource:
    """One bundle and its float source."""

    model: object  # edge.liveness.LivenessModel
    session: object  # onnxruntime.InferenceSession
    layout: str  # the source's input layout
    spec: dict

    def float_probabilities(self, crops: np.ndarray) -> np.ndarray:
        from edge.embedder import preprocess
        from edge.liveness import softmax

        batch = preprocess(crops, self.spec)
        if self.layout == "NCHW":
            batch = np.transpose(batch, (0, 3, 1, 2))
        name = self.session.get_inputs()[0].name
        rows = [self.session.run(None, {name: np.ascontiguousarray(batch[i : i + 1])})[0] for i in range(len(batch))]
        return softmax(np.concatenate(rows).reshape(len(batch), -1))


def float_source(bundle, source_dir: Path) -> tuple[Path, str]:
    info = bundle.manifest.get("source_model") or {}
    name, sha = info.get("file"), info.get("sha256")
    if not name or info.get("format") != "onnx":
        raise ModelError(f"{bundle.root}: its manifest names no ONNX source_model to compare with")
    path = source_dir / Path(name).name
    if not path.is_file():
        raise ModelError(f"{bundle.root}: float source {path} not found (--source-dir)")
    actual = sha256_file(path)
    if actual != sha:
        raise ModelIntegrityError(f"{path}: sha256 {actual}, but {bundle.root} was converted from {sha}")
    return path, info.get("layout", "NCHW")


def load_pairs(bundles: list[Path], source_dir: Path, threads: int) -> list[ConvertedAndSource]:
    import onnxruntime as ort

    from edge.liveness import LivenessModel

    pairs = []
    for root in bundles:
        bundle = load_bundle(root, expect_kind="liveness")
        path, layout = float_source(bundle, source_dir)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        pairs.append(ConvertedAndSource(LivenessModel.from_bundle(bundle, threads=threads), session, layout, bundle.input_spec))
    return pairs


def parse_set(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise click.BadParameter(f"{text!r}: give NAME=GLOB")
    return name, pattern


def sample_files(pattern: str, count: int | None, seed: int) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern))
    if count is not None and count < len(files):
        picks = np.random.default_rng(seed).choice(len(files), count, replace=False)
        files = [files[i] for i in sorted(picks)]
    return files


def _diff_stats(quantised: np.ndarray, reference: np.ndarray) -> dict:
    diff = np.abs(quantised - reference)
    return {
        "real_prob_max_diff": round(float(diff.max()), 4),
        "real_prob_mean_diff": round(float(diff.mean()), 4),
        "real_prob_p95_diff": round(float(np.quantile(diff, 0.95)), 4),
    }


def compare_set(name: str, files: list[Path], pairs: list[ConvertedAndSource], detector, threshold: float) -> dict:
    """Float vs converted probabilities of every face in ``files``: per model, ensemble, per image."""
    from edge.images import load_image

    from .crops import largest_face_box

    rows, floats, quants, seconds = [], [[] for _ in pairs], [[] for _ in pairs], [0.0] * len(pairs)
    for path in files:
        image = load_image(path)
        box = largest_face_box(image, detector)
        if box is None:
            continue
        rows.append(str(path))
        for k, pair in enumerate(pairs):
            crops = pair.model.crops(image, [box])
            started = time.perf_counter()
            quants[k].append(pair.model.crop_probabilities(crops)[0])
            seconds[k] += time.perf_counter() - started
            floats[k].append(pair.float_probabilities(crops)[0])
    report = {"set": name, "images": len(files), "faces": len(rows), "threshold": threshold, "models": []}
    if not rows:
        return report
    f_all, q_all = np.stack([np.stack(f) for f in floats]), np.stack([np.stack(q) for q in quants])  # (M, N, C)
    for k, pair in enumerate(pairs):
        real = pair.model.real_class
        f, q = f_all[k], q_all[k]
        report["models"].append({
            "bundle": pair.model.name,
            "scale": pair.model.scale,
            **_diff_stats(q[:, real], f[:, real]),
            "argmax_flips": int(np.sum(q.argmax(1) != f.argmax(1))),
            "threshold_flips": int(np.sum((q[:, real] >= threshold) != (f[:, real] >= threshold))),
            "real_share_float": round(float(np.mean(f.argmax(1) == real)), 4),
            "real_share_converted": round(float(np.mean(q.argmax(1) == real)), 4),
            "ms_per_crop": round(1000 * seconds[k] / len(rows), 3),
        })
    reals = [pair.model.real_class for pair in pairs]
    f_score = np.mean([f_all[k][:, r] for k, r in enumerate(reals)], axis=0)
    q_score = np.mean([q_all[k][:, r] for k, r in enumerate(reals)], axis=0)
    f_arg, q_arg = f_all.mean(0).argmax(1), q_all.mean(0).argmax(1)
    report["ensemble"] = {
        "bundles": [pair.model.name for pair in pairs],
        **_diff_stats(q_score, f_score),
        "argmax_flips": int(np.sum(f_arg != q_arg)),
        "threshold_flips": int(np.sum((q_score >= threshold) != (f_score >= threshold))),
        "real_share_float": round(float(np.mean(f_score >= threshold)), 4),
        "real_share_converted": round(float(np.mean(q_score >= threshold)), 4),
    }
    if len(rows) <= 10:
        report["faces_detail"] = [
            {"image": Path(p).name, "float_score": round(float(fs), 4), "converted_score": round(float(qs), 4)}
            for p, fs, qs in zip(rows, f_score, q_score)
        ]
    return report


def markdown(report: dict) -> str:
    lines = [
        "| set | model | faces | max \\|dP(real)\\| | mean | p95 | arg-max flips | flips at "
        f"{report['threshold']:g} | judged real (float / converted) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part in report["sets"]:
        entries = [(m["bundle"], m) for m in part["models"]]
        if "ensemble" in part:
            entries.append(("ensemble mean", part["ensemble"]))
        for label, m in entries:
            lines.append(
                f"| {part['set']} | {label} | {part['faces']} | {m['real_prob_max_diff']:.4f} | "
                f"{m['real_prob_mean_diff']:.4f} | {m['real_prob_p95_diff']:.4f} | {m['argmax_flips']} | "
                f"{m['threshold_flips']} | {m['real_share_float']:.3f} / {m['real_share_converted']:.3f} |"
            )
    details = [(part, face) for part in report["sets"] for face in part.get("faces_detail", [])]
    if details:
        lines.append("")
    for part in report["sets"]:
        for face in part.get("faces_detail", []):
            lines.append(f"- {part['set']} {face['image']}: ensemble P(real) float {face['float_score']:.3f}, "
                         f"converted {face['converted_score']:.3f}")
    return "\n".join(lines)


def compare(bundles: list[Path], sets: list[tuple[str, str]], count: int | None, seed: int, threshold: float,
            source_dir: Path, threads: int, progress: bool = True) -> dict:
    from tqdm import tqdm

    from edge.detect import YuNetDetector

    from .crops import DEFAULT_DETECTOR

    pairs = load_pairs(bundles, source_dir, threads)
    detector = YuNetDetector(load_bundle(DEFAULT_DETECTOR, expect_kind="detector"), score_threshold=0.6,
                             min_face_size=16)
    report = {
        "bundles": [str(b) for b in bundles],
        "runtime": getattr(pairs[0].model, "runtime", "?"),
        "threads": threads,
        "seed": seed,
        "count": count,
        "threshold": threshold,
        "detector": "largest YuNet face (score >= 0.6, min 16 px; images under 200 px upsampled for detection)",
        "sets": [],
    }
    for name, pattern in sets:
        files = sample_files(pattern, count, seed)
        if not files:
            raise ModelError(f"set {name}: no files match {pattern}")
        files = list(tqdm(files, desc=name, unit="img", disable=not progress))
        report["sets"].append(compare_set(name, files, pairs, detector, threshold))
    return report


@click.command("compare-liveness")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="NAME=GLOB",
              help="An image set (repeatable) [default: the upstream samples and CFP frontal photos].")
@click.option("--count", type=int, default=300, show_default=True, help="Images sampled per set (0: all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--source-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_SOURCES,
              show_default=True, help="Where the float ONNX sources named by the manifests are.")
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option("--no-progress", is_flag=True)
@boundary
def command(bundles, sets, count, seed, threshold, source_dir, threads, json_path, no_progress):
    """Float (onnxruntime) vs converted liveness BUNDLES: P(real) differences and verdict flips, as a table."""
    parsed = [parse_set(s) for s in sets] if sets else [parse_set(s) for s in DEFAULT_SETS]
    report = compare(list(bundles), parsed, count or None, seed, threshold, source_dir, threads, not no_progress)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    click.echo(markdown(report))


if __name__ == "__main__":
    command()
