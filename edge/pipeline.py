"""One frame through detect -> align -> embed (batched) -> match, as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import align_face
from .detect import Detector
from .embedder import Embedder
from .matcher import Matcher
from .types import Face, Frame, Match


@dataclass(frozen=True)
class FrameResult:
    frame: Frame
    faces: tuple[Face, ...]
    matches: tuple[Match, ...]


def crops_for(frame: Frame, faces: list[Face], size: int) -> list[np.ndarray]:
    return [align_face(frame.main, face.landmarks, size) for face in faces]


def analyse_frame(frame: Frame, detector: Detector, embedder: Embedder, matcher: Matcher, max_faces: int = 4) -> FrameResult:
    """Detect on lores, crop from main, embed every face in one batch, match each."""
    faces = detector.detect(frame)[:max_faces]
    if not faces:
        return FrameResult(frame, (), ())
    embeddings = embedder.embed(crops_for(frame, faces, embedder.input_size))
    return FrameResult(frame, tuple(faces), tuple(matcher.match(embeddings)))
