"""``edge-model eval-liveness``: BPCER on real faces and APCER on attacks, at the configured threshold.

Real faces (bona fide presentations): CFP frontal photos (evaluation set), UTKFace crops and the demo replay
frames; attacks: the upstream samples and synthetic prints and phone screens made from CFP frontal photos
(:mod:`edge_model.attacks`).  Every image goes through the device's path: YuNet boxes on the image, the
liveness crop of each model, the shipped bundles, the averaged real-face probability; the largest face of
each image counts.  Writes a JSON report (per set: count, faces found, BPCER or APCER at the threshold,
score quantiles, and the rate across thresholds) and a PNG of the score distributions.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from edge.bundle import load_bundle
from edge.cli import boundary
from edge.config import DEMO_DIR
from edge.detect import YuNetDetector
from edge.images import load_image

from .attacks import SPECIES, attack_frame, hand_held

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CFP = SHARED / "faces" / "eval" / "cfp" / "Data" / "Images"
UTK = SHARED / "faces" / "train" / "utkface"
UPSTREAM = SHARED / "models" / "minifasnet" / "samples"
DEFAULT_BUNDLES = ("minifasnet-v2-fp16", "minifasnet-v1se-fp16")


def _sample(paths: list[Path], count: int, rng: np.random.Generator) -> list[Path]:
    if count >= len(paths):
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), count, replace=False))]


def score_image(image: np.ndarray, detector, ensemble) -> float | None:
    faces = detector.detect_image(image)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.box[2] * f.box[3])
    return float(ensemble.scores(image, [face.box])[0])


def _rates(scores: np.ndarray, attack: bool, thresholds: np.ndarray) -> list[float]:
    # real: share judged an attack (score < t); attack: share judged real (score >= t)
    return [float(np.mean(scores >= t) if attack else np.mean(scores < t)) for t in thresholds]


def _summary(name: str, scores: list[float | None], attack: bool, threshold: float, thresholds: np.ndarray) -> dict:
    found = np.array([s for s in scores if s is not None], dtype=np.float64)
    out = {"set": name, "kind": "attack" if attack else "real", "images": len(scores), "faces": int(len(found))}
    if len(found):
        rate = float(np.mean(found >= threshold) if attack else np.mean(found < threshold))
        out["APCER" if attack else "BPCER"] = round(rate, 4)
        out["quantiles"] = {q: round(float(np.quantile(found, float(q))), 4) for q in ("0.01", "0.05", "0.5", "0.95")}
        out["curve"] = [round(v, 4) for v in _rates(found, attack, thresholds)]
        out["scores"] = [round(float(s), 4) for s in found]
    return out


def visit_passes(scores: list[float | None], threshold: float, config) -> bool:
    """Would the device's decider grant this visit if every live-judged frame matched an enrolled person?

    Frames run through :class:`edge.decide.Decider` with the door's k/n/window: a frame at or above the
    threshold is an accepted match, one below it an attack verdict, one without a face an empty frame.
    The identity is assumed to match, so this isolates what the liveness check alone lets through.
    """
    from edge.decide import Decider
    from edge.types import Match, Outcome, Verdict

    d = config.decision
    decider = Decider(d.frames_required, d.window_frames, d.window_seconds, d.cooldown_seconds)
    match = Match(1, "enrolled", 0.5, 2.0, 1.0, 0.0)
    attack = Verdict("liveness", False, 0.0, "attack", attack=True)
    for i, score in enumerate([None] * d.window_frames + list(scores)):  # the scene was empty before the visit
        if score is None:
            decision = decider.update(i, i * 0.1, [])
        elif score >= threshold:
            decision = decider.update(i, i * 0.1, [match])
        else:
            decision = decider.update(i, i * 0.1, [], [attack])
        if decision is not None and decision.outcome is Outcome.GRANTED:
            return True
    return False


def _plot(sets: list[dict], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    bins = np.linspace(0, 1, 41)
    for entry in sets:
        scores = entry.get("scores")
        if not scores:
            continue
        label = f"{entry['set']} ({entry['faces']})"
        if len(scores) < 10:  # a density of one or two images says nothing: mark them on the axis
            ax.plot(scores, [0.2] * len(scores), "v" if entry["kind"] == "attack" else "^", markersize=9, label=label)
            continue
        ax.hist(scores, bins=bins, histtype="step", density=True, linewidth=1.6,
                linestyle="-" if entry["kind"] == "real" else "--", label=label)
    ax.axvline(threshold, color="k", linewidth=1)
    ax.set_xlabel("averaged real-face probability (MiniFASNetV2 + V1SE)")
    ax.set_ylabel("density")
    ax.set_title(f"liveness scores: real faces (solid) vs attacks (dashed); threshold {threshold:.2f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command()
@click.option("--bundle", "bundles", multiple=True, help="Liveness bundles (default: the shipped pair).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold (default: liveness.threshold of the default config).")
@click.option("--cfp", "cfp_count", type=int, default=500, show_default=True, help="CFP frontal photos (real).")
@click.option("--utk", "utk_count", type=int, default=300, show_default=True, help="UTKFace crops (real).")
@click.option("--synthetic", "synthetic_count", type=int, default=300, show_default=True,
              help="Synthetic attacks of each species, from CFP frontal photos.")
@click.option("--visits", "visit_count", type=int, default=60, show_default=True,
              help="Hand-held attack visits of each species (10 frames each) run through the decider.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None)
@boundary
def command(bundles, threshold, cfp_count, utk_count, synthetic_count, visit_count, seed, json_path, plot):
    """Measure BPCER on real faces and APCER on upstream and synthetic attacks."""
    from edge.config import default_config
    from edge.liveness import load_liveness

    config = default_config()
    threshold = config.liveness.threshold if threshold is None else threshold
    paths = [Path(b) if "/" in b else REPO / "models" / b for b in (bundles or DEFAULT_BUNDLES)]
    ensemble = load_liveness(paths)
    detector = YuNetDetector(load_bundle(REPO / "models" / "yunet"), min_face_size=20)
    rng = np.random.default_rng(seed)
    thresholds = np.round(np.linspace(0, 1, 21), 2)
    frontal = sorted(CFP.glob("*/frontal/*.jpg"))

    def score_files(name, files, attack=False):
        scores = [score_image(load_image(f), detector, ensemble) for f in tqdm(files, desc=name, leave=False)]
        return _summary(name, scores, attack, threshold, thresholds)

    sets = []
    if frontal and cfp_count:
        sets.append(score_files("cfp-frontal", _sample(frontal, cfp_count, rng)))
    utk = sorted(UTK.glob("*.jpg"))
    if utk and utk_count:
        sets.append(score_files("utkface", _sample(utk, utk_count, rng)))
    sets.append(score_files("demo-replay", sorted(p for p in (DEMO_DIR / "replay").glob("*.jpg")
                                                  if "empty" not in p.name)))
    if UPSTREAM.is_dir():
        sets.append(score_files("upstream-real (T1)", [UPSTREAM / "image_T1.jpg"]))
        sets.append(score_files("upstream-attacks (F1 print, F2 screen)",
                                [UPSTREAM / "image_F1.jpg", UPSTREAM / "image_F2.jpg"], attack=True))
    if frontal and synthetic_count:
        sources = _sample(frontal, synthetic_count, np.random.default_rng(seed + 1))
        for species in SPECIES:
            scores = [score_image(attack_frame(load_image(f), species, rng), detector, ensemble)
                      for f in tqdm(sources, desc=f"synthetic-{species}", leave=False)]
            sets.append(_summary(f"synthetic-{species}", scores, True, threshold, thresholds))
    # Whole visits: a hand-held print or screen over 10 frames, and the demo replay's visits, through the decider.
    visits = []
    if frontal and visit_count:
        sources = _sample(frontal, visit_count, np.random.default_rng(seed + 2))
        for species in SPECIES:
            granted = 0
            for f in tqdm(sources, desc=f"visits-{species}", leave=False):
                frames = hand_held(load_image(f), species, 10, rng)
                granted += visit_passes([score_image(im, detector, ensemble) for im in frames], threshold, config)
            visits.append({"set": f"synthetic-{species} visits (10 frames, hand-held)", "kind": "attack",
                           "visits": len(sources), "passed": granted,
                           "APCER": round(granted / len(sources), 4)})
    demo_frames = sorted((DEMO_DIR / "replay").glob("*.jpg"))
    demo_visits, current = [], []
    for path in demo_frames:
        if "empty" in path.name:
            if current:
                demo_visits.append(current)
            current = []
        else:
            current.append(score_image(load_image(path), detector, ensemble))
    if current:
        demo_visits.append(current)
    passed = sum(visit_passes(v, threshold, config) for v in demo_visits)
    visits.append({"set": "demo-replay visits", "kind": "real", "visits": len(demo_visits), "passed": passed,
                   "BPCER": round(1 - passed / max(len(demo_visits), 1), 4)})
    report = {
        "threshold": threshold, "thresholds": thresholds.tolist(),
        "bundles": [{"name": m.name, "model_id": m.model_id, "scale": m.scale} for m in ensemble.models],
        "detector": "models/yunet (YuNet 2023mar), largest face per image",
        "seed": seed, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "decider": {k: getattr(config.decision, k) for k in ("frames_required", "window_frames", "window_seconds")},
        "sets": sets, "visits": visits,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    for entry in sets:
        rate = entry.get("BPCER", entry.get("APCER"))
        label = "BPCER" if entry["kind"] == "real" else "APCER"
        shown = "n/a" if rate is None else f"{100 * rate:.2f} %"
        median = entry.get("quantiles", {}).get("0.5")
        click.echo(f"{entry['set']:<40} {entry['faces']:>4}/{entry['images']:<4} faces  {label} {shown:>8}  "
                   f"median score {median}")
    for entry in visits:
        label = "BPCER" if entry["kind"] == "real" else "APCER"
        click.echo(f"{entry['set']:<40} {entry['passed']:>4}/{entry['visits']:<4} passed  {label} "
                   f"{100 * entry[label]:.2f} % (per visit)")
    if plot is not None:
        _plot(sets, threshold, plot)
        click.echo(f"plot: {plot}")
