"""One frame through detect -> face checks -> align -> embed (batched) -> match, as plain functions.

The result carries what each stage made (crops, embeddings), so a later user
of the frame - two-stage confirmation, live enrollment - never aligns or
embeds the same face again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .align import align_face
from .detect import Detector
from .embedder import Embedder
from .matcher import Matcher
from .types import Face, Frame, Match, Verdict


@dataclass(frozen=True)
class FrameResult:
    """``faces``, ``crops``, ``embeddings`` and ``matches`` are aligned: one entry per face that passed
    every check.  ``refused`` holds the faces a check turned down, with its verdict."""

    frame: Frame
    faces: tuple[Face, ...]
    matches: tuple[Match, ...]
    crops: tuple[np.ndarray, ...] = field(default=(), repr=False)
    embeddings: np.ndarray | None = field(default=None, repr=False)
    refused: tuple[tuple[Face, Verdict], ...] = ()

    @property
    def face_count(self) -> int:
        return len(self.faces) + len(self.refused)


def crops_for(frame: Frame, faces: Sequence[Face], size: int) -> list[np.ndarray]:
    return [align_face(frame.main, face.landmarks, size) for face in faces]


def run_checks(frame: Frame, faces: list[Face], checks: Sequence) -> tuple[list[Face], list[tuple[Face, Verdict]]]:
    """Split faces into those every check passed and those refused (with the first failing verdict)."""
    passed, refused = list(faces), []
    for check in checks:
        if not passed:
            break
        verdicts = check.check(frame, passed)
        if len(verdicts) != len(passed):
            raise ValueError(f"face check {check.name} returned {len(verdicts)} verdicts for {len(passed)} faces")
        refused += [(face, v) for face, v in zip(passed, verdicts) if not v.passed]
        passed = [face for face, v in zip(passed, verdicts) if v.passed]
    return passed, refused


def analyse_frame(frame: Frame, detector: Detector, embedder: Embedder, matcher: Matcher, max_faces: int = 4,
                  checks: Sequence = ()) -> FrameResult:
    """Detect on lores, check, crop from main, embed every passing face in one batch, match each."""
    faces, refused = run_checks(frame, detector.detect(frame)[:max_faces], checks)
    if not faces:
        return FrameResult(frame, (), (), refused=tuple(refused))
    crops = crops_for(frame, faces, embedder.input_size)
    embeddings = embedder.embed(crops)
    return FrameResult(frame, tuple(faces), tuple(matcher.match(embeddings)), tuple(crops), embeddings,
                       tuple(refused))
