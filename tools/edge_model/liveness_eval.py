"""``edge-model eval-liveness``: BPCER on real faces and APCER on attacks, at the configured threshold.

Real faces (bona fide presentations): CFP frontal photos (evaluation set), UTKFace crops, CelebA in-the-wild
photos and the demo replay frames.  Attacks: the upstream samples, and synthetic prints and phone screens
(:mod:`edge_model.attacks`) of CFP frontal photos held in view and of CelebA photos held up to the lens.
Every image goes through the device's path: YuNet boxes on the image, the door's liveness check on the
largest face (a face too close to judge is turned down unjudged; otherwise the liveness crop of each model,
the shipped bundles, the averaged real-face probability).  Writes a JSON report (per set: count, faces found,
faces too close, BPCER or APCER at the threshold, the rate had every face been judged and by face size,
score quantiles, and the rate across thresholds) and a PNG of the score distributions.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from edge.bundle import load_bundle
from edge.cli import boundary
from edge.config import DEMO_DIR
from edge.detect import YuNetDetector
from edge.images import load_image
from edge.types import Frame

from .attacks import SPECIES, attack_frame, close_placement, hand_held

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CFP = SHARED / "faces" / "eval" / "cfp" / "Data" / "Images"
UTK = SHARED / "faces" / "train" / "utkface"
WILD = SHARED / "faces" / "train" / "celeba_wild"
FRACTION_BINS = (0.0, 0.5, 0.66, 0.83, 1.0, float("inf"))  # share of the image the face box spans
UPSTREAM = SHARED / "models" / "minifasnet" / "samples"
DEFAULT_BUNDLES = ("minifasnet-v2-fp16", "minifasnet-v1se-fp16")


def _sample(paths: list[Path], count: int, rng: np.random.Generator) -> list[Path]:
    if count >= len(paths):
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), count, replace=False))]


@dataclass(frozen=True)
class Judged:
    """The largest face of one image as the door's liveness check sees it."""

    score: float  # the averaged P(real), computed even where the door would not judge the face
    fraction: float  # the share of the image the face box spans (LivenessCheck.spans)
    too_close: bool  # over liveness.max_face_fraction: the door turns it down without judging it


def judge_image(image: np.ndarray, detector, check) -> Judged | None:
    faces = detector.detect_image(image)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.box[2] * f.box[3])
    frame = Frame(0, 0.0, image, image)
    return Judged(float(check.scores(frame, [face])[0]), check.spans(frame, face),
                  check.too_close(frame, face) is not None)


def _rate(scores: np.ndarray, attack: bool, threshold: float, faces: int) -> float:
    # real: share of the judged faces called an attack; attack: share of all its faces let through (a face too
    # close to judge is refused, so it can only lower APCER, never BPCER)
    if attack:
        return float(np.sum(scores >= threshold) / faces)
    return float(np.mean(scores < threshold))


def _summary(name: str, judged: list[Judged | None], attack: bool, threshold: float, thresholds: np.ndarray) -> dict:
    found = [j for j in judged if j is not None]
    label = "APCER" if attack else "BPCER"
    out = {"set": name, "kind": "attack" if attack else "real", "images": len(judged), "faces": len(found),
           "too_close": sum(j.too_close for j in found)}
    if not found:
        return out
    every = np.array([j.score for j in found], dtype=np.float64)
    scores = np.array([j.score for j in found if not j.too_close], dtype=np.float64)
    fractions = np.array([j.fraction for j in found])
    out[f"{label}_judging_every_face"] = round(_rate(every, attack, threshold, len(found)), 4)
    out["by_fraction"] = []
    for lo, hi in zip(FRACTION_BINS[:-1], FRACTION_BINS[1:]):
        inside = (fractions > lo) & (fractions <= hi)
        if inside.any():
            out["by_fraction"].append({"fraction": [lo, hi], "faces": int(inside.sum()),
                                       label: round(_rate(every[inside], attack, threshold, int(inside.sum())), 4)})
    if len(scores):
        out[label] = round(_rate(scores, attack, threshold, len(found)), 4)
        out["quantiles"] = {q: round(float(np.quantile(scores, float(q))), 4) for q in ("0.01", "0.05", "0.5", "0.95")}
        out["curve"] = [round(_rate(scores, attack, float(t), len(found)), 4) for t in thresholds]
        out["scores"] = [round(float(v), 4) for v in scores]
    elif attack:
        out[label] = 0.0
    return out


def visit_passes(frames: list[Judged | None], threshold: float, config) -> bool:
    """Would the device's decider grant this visit if every live-judged frame matched an enrolled person?

    Frames run through :class:`edge.decide.Decider` with the door's k/n/window: a frame at or above the
    threshold is an accepted match, one below it an attack verdict, one too close a refusal, one without a
    face an empty frame.  The identity is assumed to match, so this isolates what the liveness check alone
    lets through.
    """
    from edge.decide import Decider
    from edge.types import Match, Outcome, Verdict

    d = config.decision
    decider = Decider(d.frames_required, d.window_frames, d.window_seconds, d.cooldown_seconds)
    match = Match(1, "enrolled", 0.5, 2.0, 1.0, 0.0)
    attack = Verdict("liveness", False, 0.0, "attack", attack=True, code="attack")
    too_close = Verdict("liveness", False, None, "too close", code="too_close")
    for i, frame in enumerate([None] * d.window_frames + list(frames)):  # the scene was empty before the visit
        if frame is None:
            decision = decider.update(i, i * 0.1, [])
        elif frame.too_close:
            decision = decider.update(i, i * 0.1, [], [too_close])
        elif frame.score >= threshold:
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
        label = f"{entry['set']} ({len(scores)} judged)"
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
@click.option("--wild", "wild_count", type=int, default=2000, show_default=True,
              help="CelebA in-the-wild photos (real, uncropped: the face with its surroundings).")
@click.option("--synthetic", "synthetic_count", type=int, default=300, show_default=True,
              help="Synthetic attacks of each species: from CFP frontal photos held in view, from CelebA photos held "
                   "up to the lens.")
@click.option("--visits", "visit_count", type=int, default=60, show_default=True,
              help="Hand-held attack visits of each species (10 frames each) run through the decider.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None)
@boundary
def command(bundles, threshold, cfp_count, utk_count, wild_count, synthetic_count, visit_count, seed, json_path,
            plot):
    """Measure BPCER on real faces and APCER on upstream and synthetic attacks.

    Each image's largest face goes through the door's liveness check: a face spanning more than
    ``liveness.max_face_fraction`` of the image is not judged (the door asks the person to step back), so BPCER
    is over the faces judged and APCER over all faces; each set also reports the rates had every face been
    judged, and by the share of the image the face spans.
    """
    from edge.checks import LivenessCheck
    from edge.config import default_config
    from edge.liveness import load_liveness

    config = default_config()
    threshold = config.liveness.threshold if threshold is None else threshold
    paths = [Path(b) if "/" in b else REPO / "models" / b for b in (bundles or DEFAULT_BUNDLES)]
    ensemble = load_liveness(paths)
    check = LivenessCheck(ensemble, threshold, config.liveness.max_face_fraction)
    detector = YuNetDetector(load_bundle(REPO / "models" / "yunet"), min_face_size=20)
    rng = np.random.default_rng(seed)
    thresholds = np.round(np.linspace(0, 1, 21), 2)
    frontal = sorted(CFP.glob("*/frontal/*.jpg"))

    def judge(image):
        return judge_image(image, detector, check)

    def score_files(name, files, attack=False):
        judged = [judge(load_image(f)) for f in tqdm(files, desc=name, leave=False)]
        return _summary(name, judged, attack, threshold, thresholds)

    sets = []
    if frontal and cfp_count:
        sets.append(score_files("cfp-frontal", _sample(frontal, cfp_count, rng)))
    utk = sorted(UTK.glob("*.jpg"))
    if utk and utk_count:
        sets.append(score_files("utkface", _sample(utk, utk_count, rng)))
    wild = sorted(WILD.rglob("*.jpg"))
    if wild and wild_count:
        sets.append(score_files("celeba-wild", _sample(wild, wild_count, np.random.default_rng(seed + 3))))
    sets.append(score_files("demo-replay", sorted(p for p in (DEMO_DIR / "replay").glob("*.jpg")
                                                  if "empty" not in p.name)))
    if UPSTREAM.is_dir():
        sets.append(score_files("upstream-real (T1)", [UPSTREAM / "image_T1.jpg"]))
        sets.append(score_files("upstream-attacks (F1 print, F2 screen)",
                                [UPSTREAM / "image_F1.jpg", UPSTREAM / "image_F2.jpg"], attack=True))
    # Held in view: CFP portraits on a print or phone inside the frame.  Held up to the lens: the medium larger
    # than the frame, so a portrait's face would overflow it; CelebA photos show a smaller face.
    attack_sources = []
    if frontal and synthetic_count:
        attack_sources.append(("", lambda: None, _sample(frontal, synthetic_count, np.random.default_rng(seed + 1))))
    if wild and synthetic_count:
        attack_sources.append((" held close", lambda: close_placement(rng),
                               _sample(wild, synthetic_count, np.random.default_rng(seed + 4))))
    for held, placement, sources in attack_sources:
        for species in SPECIES:
            judged = [judge(attack_frame(load_image(f), species, rng, placement()))
                      for f in tqdm(sources, desc=f"synthetic-{species}{held}", leave=False)]
            sets.append(_summary(f"synthetic-{species}{held}", judged, True, threshold, thresholds))
    # Whole visits: a hand-held print or screen over 10 frames, and the demo replay's visits, through the decider.
    visits = []
    if frontal and visit_count:
        sources = _sample(frontal, visit_count, np.random.default_rng(seed + 2))
        for species in SPECIES:
            granted = 0
            for f in tqdm(sources, desc=f"visits-{species}", leave=False):
                frames = hand_held(load_image(f), species, 10, rng)
                granted += visit_passes([judge(im) for im in frames], threshold, config)
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
            current.append(judge(load_image(path)))
    if current:
        demo_visits.append(current)
    passed = sum(visit_passes(v, threshold, config) for v in demo_visits)
    visits.append({"set": "demo-replay visits", "kind": "real", "visits": len(demo_visits), "passed": passed,
                   "BPCER": round(1 - passed / max(len(demo_visits), 1), 4)})
    report = {
        "threshold": threshold, "thresholds": thresholds.tolist(), "max_face_fraction": check.max_face_fraction,
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
        every = entry.get(f"{label}_judging_every_face")
        every = "" if every is None else f"  (judging every face {100 * every:.2f} %)"
        click.echo(f"{entry['set']:<40} {entry['faces']:>4}/{entry['images']:<4} faces  {entry['too_close']:>4} too "
                   f"close  {label} {shown:>8}  median score {median}{every}")
    for entry in visits:
        label = "BPCER" if entry["kind"] == "real" else "APCER"
        click.echo(f"{entry['set']:<40} {entry['passed']:>4}/{entry['visits']:<4} passed  {label} "
                   f"{100 * entry[label]:.2f} % (per visit)")
    if plot is not None:
        _plot(sets, threshold, plot)
        click.echo(f"plot: {plot}")
