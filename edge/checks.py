"""Face checks: a stage between detection and embedding that can turn a face down.

A check receives the frame and its detected faces and returns one
:class:`~edge.types.Verdict` per face.  A face that fails any check is never
embedded and never counts towards a grant; when failing faces persist over
k of the last n frames, the decider reports a ``refused`` decision naming the
check (journald, audit table, MQTT/webhook events, ``edge run --json``).

Checks are chosen by name (``decision.face_checks``, comma-separated) from the
``edge.checks`` registry; packages add theirs through that entry-point group.
A check is built once at start-up with :meth:`FaceCheck.from_config`.
"""

from __future__ import annotations

import abc
import logging
from typing import Sequence

from .registry import Registry
from .types import Face, Frame, Verdict

log = logging.getLogger(__name__)

CHECKS = Registry("face check", "edge.checks", {"liveness": "edge.checks:LivenessCheck"})


class FaceCheck(abc.ABC):
    name: str

    @classmethod
    def from_config(cls, config) -> "FaceCheck":
        return cls()

    @abc.abstractmethod
    def check(self, frame: Frame, faces: Sequence[Face]) -> list[Verdict]:
        """One verdict per face, in order."""

    def reload(self, config) -> None:
        """Take what a reloaded config changes without rebuilding (SIGHUP); most checks have nothing to take."""


def check_names(config) -> list[str]:
    return [name.strip() for name in config.decision.face_checks.split(",") if name.strip()]


def build_checks(config) -> list[FaceCheck]:
    return [CHECKS.load(name).from_config(config) for name in check_names(config)]


def liveness_model_names(config) -> list[str]:
    return [name.strip() for name in config.liveness.models.split(",") if name.strip()]


class LivenessCheck(FaceCheck):
    """Passive presentation-attack detection: a printed photo or a phone screen is turned down before the match.

    The models (:mod:`edge.liveness`) look at the face box scaled out to include its surroundings (paper edges,
    bezels, moire, glare); their real-face probabilities are averaged and compared with
    ``liveness.threshold``.  A face spanning more than ``liveness.max_face_fraction`` of the frame leaves no
    surroundings to see: it is not judged but turned down as too close (measured on CelebA photos: faces spanning
    66-83 % of the picture were called attacks 9.8 % of the time, up to half of it 2.1 %).  Built
    once at start-up; a missing or tampered bundle stops the start (fail closed).
    """

    name = "liveness"

    def __init__(self, ensemble, threshold: float, max_face_fraction: float) -> None:
        self.ensemble = ensemble
        self.threshold = threshold
        self.max_face_fraction = max_face_fraction

    @classmethod
    def from_config(cls, config) -> "LivenessCheck":
        from .errors import ConfigError
        from .liveness import load_liveness

        paths = [config.model_path(name) for name in liveness_model_names(config)]
        if not paths:
            raise ConfigError("decision.face_checks names liveness but liveness.models is empty")
        live = config.liveness
        check = cls(load_liveness(paths, threads=live.threads), live.threshold, live.max_face_fraction)
        log.info("liveness check: %s, threshold %.3f%s, faces up to %.0f%% of the frame",
                 ", ".join(m.name for m in check.ensemble.models), check.threshold,
                 f" (measured: {live.measured})" if live.measured else "", 100 * check.max_face_fraction)
        return check

    def reload(self, config) -> None:
        self.threshold = config.liveness.threshold
        self.max_face_fraction = config.liveness.max_face_fraction

    @staticmethod
    def spans(frame: Frame, face: Face) -> float:
        """The share of the main stream the face box spans (:func:`edge.liveness.face_fraction`)."""
        from .liveness import face_fraction

        height, width = frame.main.shape[:2]
        return face_fraction(width, height, face.box)

    def too_close(self, frame: Frame, face: Face) -> Verdict | None:
        """The verdict for a face too close to be judged, or None when the models can see around it."""
        fraction = self.spans(frame, face)
        if fraction <= self.max_face_fraction:
            return None
        return Verdict(self.name, False, None, code="too_close",
                       reason=f"too close to the camera for the liveness check: step back (the face spans "
                              f"{fraction:.0%} of the frame, at most {self.max_face_fraction:.0%})")

    def scores(self, frame: Frame, faces: Sequence[Face]):
        """The averaged real-face probability of each face, judged or not (for recording and tuning)."""
        return self.ensemble.scores(frame.main, [face.box for face in faces])

    def check(self, frame: Frame, faces: Sequence[Face]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [self.too_close(frame, face) for face in faces]
        judged = [face for face, verdict in zip(faces, verdicts) if verdict is None]
        scores = iter(self.scores(frame, judged) if judged else ())
        for i, verdict in enumerate(verdicts):
            if verdict is not None:
                continue
            score = float(next(scores))
            if score >= self.threshold:
                verdicts[i] = Verdict(self.name, True, score)
            else:
                verdicts[i] = Verdict(
                    self.name, False, score, attack=True, code="attack",
                    reason=f"presentation attack (a photo or a screen, not a live face): "
                           f"real-face score {score:.3f} < {self.threshold:.3f}")
        return verdicts
