"""Tuning the liveness threshold on the door's own camera: record presentations, measure, choose, write.

Passive RGB anti-spoofing depends on the camera, the lens and the light, so a
threshold measured elsewhere is a starting point, not a setting.  The operator
records a few seconds of real faces at the door, then their own printed photo
and a phone showing a picture; each recorded frame keeps only the liveness
score of its largest face (no image, unless asked).  The report gives, in the
terms of ISO/IEC 30107-3:

- **BPCER** (bona fide presentation classification error rate): the share of
  real-face frames judged an attack - people turned away at their own door;
- **APCER** per attack species (print, screen, ...): the share of attack frames
  judged real, and its maximum over species, which is what an attacker picks.

The chosen threshold is the highest one whose BPCER stays within the target
(the lowest APCER the door's own people can live with); ``--write`` puts it
into the config together with what it was measured on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import TuningError

REAL = "real"
# Attack species the recorder offers; any other label is an attack species of its own.
SPECIES = ("print", "screen")


@dataclass(frozen=True)
class Presentation:
    """One recorded frame: what was shown (``real`` or an attack species) and its liveness score."""

    label: str
    score: float
    ts: float = 0.0
    source: str = ""


def write_presentations(path: str | Path, presentations: Iterable[Presentation]) -> int:
    """Append to a session file (JSON lines): recordings of several labels can share one file."""
    count = 0
    with open(path, "a", encoding="utf-8") as handle:
        for p in presentations:
            handle.write(json.dumps({"label": p.label, "score": round(p.score, 6), "ts": round(p.ts, 3),
                                     "source": p.source}) + "\n")
            count += 1
    return count


def read_presentations(paths: Sequence[str | Path]) -> list[Presentation]:
    out: list[Presentation] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TuningError(f"{path}: cannot read the session file: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                score = float(row["score"])
                label = str(row["label"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TuningError(f"{path}:{number}: not a recorded presentation ({exc})") from exc
            if not (math.isfinite(score) and 0.0 <= score <= 1.0) or not label:
                raise TuningError(f"{path}:{number}: score {score!r} / label {label!r} out of range")
            out.append(Presentation(label, score, float(row.get("ts") or 0.0), str(row.get("source") or "")))
    return out


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    bpcer: float
    apcer: dict[str, float]  # per attack species

    @property
    def max_apcer(self) -> float:
        return max(self.apcer.values()) if self.apcer else 0.0


def error_rates(real: np.ndarray, attacks: dict[str, np.ndarray], threshold: float) -> OperatingPoint:
    """A face is judged real when its score is at least the threshold (as :class:`edge.checks.LivenessCheck`)."""
    bpcer = float(np.mean(real < threshold)) if len(real) else 0.0
    apcer = {species: float(np.mean(scores >= threshold)) for species, scores in attacks.items() if len(scores)}
    return OperatingPoint(threshold, bpcer, apcer)


def split(presentations: Sequence[Presentation]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    real = np.array([p.score for p in presentations if p.label == REAL], dtype=np.float64)
    attacks: dict[str, list[float]] = {}
    for p in presentations:
        if p.label != REAL:
            attacks.setdefault(p.label, []).append(p.score)
    return real, {k: np.array(v, dtype=np.float64) for k, v in sorted(attacks.items())}


def curve(presentations: Sequence[Presentation], steps: int = 101) -> list[OperatingPoint]:
    real, attacks = split(presentations)
    return [error_rates(real, attacks, t) for t in np.linspace(0.0, 1.0, steps)]


def choose_threshold(presentations: Sequence[Presentation], bpcer_target: float = 0.02) -> OperatingPoint:
    """The highest threshold (fewest attacks let through) whose BPCER is within the target."""
    real, attacks = split(presentations)
    if len(real) == 0:
        raise TuningError("no real-face presentations recorded: record the door's own people first (--label real)")
    # A face scoring exactly the threshold is judged real, so the recorded real scores are the thresholds at
    # which BPCER steps: the highest one within the target leaves at most that share of real frames below.
    candidates = sorted({0.0, *real.clip(0.0, 1.0).tolist()})
    best = error_rates(real, attacks, 0.0)
    for t in candidates:
        point = error_rates(real, attacks, float(t))
        if point.bpcer <= bpcer_target + 1e-12:
            best = point
    return best


def describe(presentations: Sequence[Presentation], point: OperatingPoint) -> str:
    """What the threshold was measured on, in one line for ``liveness.measured``."""
    real, attacks = split(presentations)
    species = ", ".join(f"{k} {len(v)}" for k, v in attacks.items()) or "no attacks"
    apcer = ", ".join(f"{k} {100 * v:.1f} %" for k, v in point.apcer.items()) or "n/a"
    return (f"edge liveness-tune {time.strftime('%Y-%m-%d')}: {len(real)} real frames, {species} attack frames; "
            f"BPCER {100 * point.bpcer:.1f} %, APCER {apcer} at {point.threshold:.4f}")


def plot_scores(presentations: Sequence[Presentation], point: OperatingPoint, path: str | Path,
                width: int = 800, height: int = 420) -> Path:
    """Score histograms per label and the chosen threshold, drawn with OpenCV (no matplotlib on the device)."""
    import cv2

    real, attacks = split(presentations)
    groups = [(REAL, real, (60, 160, 60))] + [
        (name, scores, colour) for (name, scores), colour in
        zip(attacks.items(), [(40, 40, 220), (200, 120, 30), (160, 60, 160), (30, 160, 200)] * 4)
    ]
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, width - 20, 40, height - 50
    bins = 50
    edges = np.linspace(0.0, 1.0, bins + 1)
    fractions = [np.histogram(s, edges)[0] / max(len(s), 1) for _, s, _ in groups]
    peak = max((f.max() for f in fractions if len(f)), default=1.0) or 1.0
    cv2.rectangle(image, (left, top), (right, bottom), (0, 0, 0), 1)
    bin_w = (right - left) / bins
    for (name, scores, colour), frac in zip(groups, fractions):
        points = [(int(left + (i + 0.5) * bin_w), int(bottom - (bottom - top) * f / peak)) for i, f in enumerate(frac)]
        cv2.polylines(image, [np.array(points, np.int32)], False, colour, 2, cv2.LINE_AA)
    x = int(left + (right - left) * point.threshold)
    cv2.line(image, (x, top), (x, bottom), (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"threshold {point.threshold:.3f}", (min(x + 4, right - 150), top + 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(0, 11, 2):
        tx = int(left + (right - left) * i / 10)
        cv2.putText(image, f"{i / 10:.1f}", (tx - 10, bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(image, "real-face score (share of frames per label)", (left, height - 12), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"BPCER {100 * point.bpcer:.1f} %  max APCER {100 * point.max_apcer:.1f} %", (left, 25),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    lx = left + 330
    for name, s, colour in groups:
        label = f"{name} ({len(s)})"
        cv2.line(image, (lx, 20), (lx + 20, 20), colour, 3)
        cv2.putText(image, label, (lx + 24, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        lx += 30 + 9 * len(label)
    path = Path(path)
    if not cv2.imwrite(str(path), image):
        raise TuningError(f"{path}: could not write the plot")
    return path
