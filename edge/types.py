"""The values that flow through the pipeline, one frozen dataclass per stage.

Frame -> Face (detector) -> aligned crop + embedding -> Match (gallery) ->
Decision (over several frames).  Arrays inside are never mutated after
construction; the dataclasses are frozen so that a stage cannot change what an
earlier stage produced.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One capture.  ``main`` is full resolution BGR; ``lores`` is what the detector sees.

    ``lores_scale`` maps lores pixel coordinates to main: ``main_xy = lores_xy * lores_scale``.
    Sources that have no hardware lores stream derive it by resizing main.
    """

    index: int
    timestamp: float
    main: np.ndarray = field(repr=False)
    lores: np.ndarray = field(repr=False)
    lores_scale: float = 1.0
    source: str = ""


@dataclass(frozen=True)
class Face:
    """A detected face in ``main`` coordinates: box (x, y, w, h), detector score and 5 landmarks.

    Landmarks are, in image order: right eye, left eye, nose tip, right and left
    mouth corners (the subject's right appears on the image's left).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)  # shape (5, 2), float32

    @property
    def size(self) -> float:
        """The shorter side of the box in pixels: what "minimum face size" limits."""
        return float(min(self.box[2], self.box[3]))


@dataclass(frozen=True)
class Match:
    """The gallery's answer for one embedding."""

    person_id: int | None
    name: str | None
    distance: float
    second_distance: float
    threshold: float
    margin: float

    @property
    def accepted(self) -> bool:
        """Within the threshold and far enough ahead of the runner-up identity."""
        return (
            self.person_id is not None
            and self.distance <= self.threshold
            and (self.second_distance - self.distance) >= self.margin
        )


@dataclass(frozen=True)
class Verdict:
    """A face check's answer for one face (see :mod:`edge.checks`).

    ``attack``: the face was turned down as a presentation attack (a photo, a screen), not merely as
    unusable; such a face becomes a SPOOF decision and blocks any grant in the frames around it.
    """

    check: str
    passed: bool
    score: float | None = None
    reason: str = ""
    attack: bool = False
    code: str = ""  # a short word for the reason ("too_close"), for enrollment's messages and machines


class Outcome(str, enum.Enum):
    GRANTED = "granted"
    UNKNOWN = "unknown"
    NO_FACE = "no_face"
    REFUSED = "refused"  # faces turned down by a face check
    SPOOF = "spoof"  # faces a face check judged a presentation attack (a photo or a screen)


@dataclass(frozen=True)
class Decision:
    """What the decider concluded; the door service turns GRANTED into an unlock."""

    outcome: Outcome
    timestamp: float
    frame_index: int
    name: str | None = None
    person_id: int | None = None
    distance: float | None = None
    frames: int = 0
    window: int = 0
    model: str = ""
    check: str | None = None  # REFUSED/SPOOF: the face check that turned the faces down, and why
    reason: str = ""
    score: float | None = None  # REFUSED/SPOOF: the check's score for the last refused face
    alert: bool = False  # SPOOF: one of several attacks within the alert window (edge.decide.AttackAlarm)

    def check_detail(self) -> dict:
        """REFUSED/SPOOF: the face check's fields (check, reason, score, alert) for the audit row, events and JSON."""
        if not self.check:
            return {}
        return {"check": self.check, "reason": self.reason, "score": self.score, "alert": self.alert}

    def describe(self) -> str:
        """One human line, as printed by ``edge run`` and written to the journal."""
        if self.outcome is Outcome.GRANTED:
            return (
                f"granted name={self.name} distance={self.distance:.3f} "
                f"frames={self.frames}/{self.window} frame={self.frame_index}"
            )
        if self.outcome is Outcome.UNKNOWN:
            dist = "" if self.distance is None else f" distance={self.distance:.3f}"
            return f"unknown{dist} frames={self.frames}/{self.window} frame={self.frame_index}"
        if self.outcome in (Outcome.REFUSED, Outcome.SPOOF):
            score = "" if self.score is None else f" score={self.score:.3f}"
            alert = " alert" if self.alert else ""
            return (f"{self.outcome.value} check={self.check}{score} reason={self.reason!r} "
                    f"frames={self.frames}/{self.window} frame={self.frame_index}{alert}")
        return f"no_face frames={self.frames}/{self.window} frame={self.frame_index}"
