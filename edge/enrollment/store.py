"""Storing enrolled captures (the one write path of file, bulk, live and demo enrollment), and enrollment from image files."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..align import align_face
from ..detect import Detector
from ..embedder import Embedder
from ..errors import MultipleFacesError, NoFaceError
from ..gallery import Gallery
from ..images import load_image
from ..types import Face

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSample:
    source: str
    crop: np.ndarray
    face: Face


def png_bytes(crop: np.ndarray) -> bytes:
    """How kept face crops are stored: lossless, so re-embedding sees the enrolled pixels."""
    return cv2.imencode(".png", crop)[1].tobytes()


def single_face(image: np.ndarray, detector: Detector, source: str) -> Face:
    """The one face in an enrollment image; refuse none or several (ambiguity is not guessed away)."""
    faces = detector.detect_image(image)
    if not faces:
        raise NoFaceError(f"{source}: no face found (too small, too dark, or turned away)")
    if len(faces) > 1:
        raise MultipleFacesError(
            f"{source}: {len(faces)} faces found; enrollment needs exactly one person in the picture"
        )
    return faces[0]


def prepare_image(path: str | Path, detector: Detector, size: int) -> PreparedSample:
    image = load_image(path)
    face = single_face(image, detector, str(path))
    return PreparedSample(str(path), align_face(image, face.landmarks, size), face)


def store_captures(gallery: Gallery, name: str, crops: Sequence[np.ndarray], embeddings: np.ndarray, model_id: str,
                   *, companions: Sequence[Embedder] = (), dtype: str = "float32",
                   quality: Sequence[float | None] | None = None, source: Sequence[str | None] | None = None,
                   capture_ids: Sequence[str] | None = None, keep_crops: bool = False) -> int:
    """The one way enrollment writes a person's captures: the main model's embeddings, the same crops
    embedded by each companion model (two-stage, tied by capture id) and, if asked, the crops - in one
    transaction (nested in the caller's, if any), so all of it lands or none.  Returns the person id.
    """
    capture_ids = list(capture_ids) if capture_ids is not None else [uuid.uuid4().hex for _ in crops]
    with gallery.transaction():
        person_id = gallery.add_samples(name, embeddings, model_id, dtype=dtype, quality=quality, source=source,
                                        crops=[png_bytes(c) for c in crops] if keep_crops else None,
                                        capture_ids=capture_ids)
        for companion in companions:
            gallery.add_samples(name, companion.embed(list(crops)), companion.model_id, dtype=dtype,
                                source=["companion"] * len(crops), capture_ids=capture_ids, create=False)
    return person_id


def enroll_files(gallery: Gallery, detector: Detector, embedder: Embedder, name: str,
                 paths: Sequence[str | Path], dtype: str = "float32", keep_crops: bool = False,
                 companions: Sequence[Embedder] = ()) -> int:
    """Enroll ``name`` from image files; all or nothing: one bad file stores none of them."""
    prepared = [prepare_image(p, detector, embedder.input_size) for p in paths]
    crops = [s.crop for s in prepared]
    store_captures(gallery, name, crops, embedder.embed(crops), embedder.model_id, companions=companions,
                   dtype=dtype, quality=[s.face.score for s in prepared],
                   source=[Path(s.source).name for s in prepared], keep_crops=keep_crops)
    log.info("enrolled %s from %d image(s)", name, len(prepared))
    return len(prepared)


def reembed_from_crops(gallery: Gallery, embedder: Embedder, dtype: str = "float32") -> dict[str, int | str]:
    """Embed every kept crop with ``embedder`` so the gallery can be used with a new model.

    Samples of the old model stay (switching back keeps working); people
    without kept crops are reported, since only a new enrollment can add them.
    Returns {name: samples added} with "re-enroll" for people who had no crops.
    """
    report: dict[str, int | str] = {}
    for person in gallery.people():
        if embedder.model_id in person.models:
            report[person.name] = 0
            continue
        kept = gallery.crops_for(person.name)
        if not kept:
            report[person.name] = "re-enroll"
            continue
        crops = [cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR) for _, blob in kept]
        embeddings = embedder.embed(crops)
        gallery.add_samples(person.name, embeddings, embedder.model_id, dtype=dtype,
                            source=["re-embedded crop"] * len(kept), capture_ids=[cap for cap, _ in kept],
                            create=False)
        report[person.name] = len(kept)
    return report
