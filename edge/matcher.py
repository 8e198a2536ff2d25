"""Nearest-identity matching against the gallery held in memory as one numpy matrix.

Distances are L2 between unit vectors (``sqrt(2 - 2 cos)``), the quantity the
threshold is tuned in.  A person's distance is that of their closest sample.
The matrix is reloaded when another process (enrollment) changes the gallery.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .errors import ModelMismatchError
from .gallery import Gallery, GalleryMatrix
from .types import Match

log = logging.getLogger(__name__)


def l2_distances(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(N, D) x (M, D) unit vectors -> (N, M) L2 distances."""
    cosine = np.clip(queries @ gallery.T, -1.0, 1.0)
    return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))


def check_gallery_model(gallery: Gallery, model_id: str, legacy_model_id: str | None = None) -> None:
    """Refuse to run a model on a gallery enrolled with a different one.

    ``legacy_model_id`` (the bundle's pre-manifest id) is relabelled first, so
    old galleries migrate instead of being refused.
    """
    if legacy_model_id:
        gallery.adopt_model_id(legacy_model_id, model_id)
    counts = gallery.model_counts()
    if counts and model_id not in counts:
        enrolled = ", ".join(f"{m} ({n} samples)" for m, n in counts.items())
        raise ModelMismatchError(
            f"the gallery was enrolled with {enrolled}, but the loaded embedder is {model_id}; embeddings of "
            "different models cannot be compared. Switch back to that model, re-embed from kept crops "
            "('edge enroll reembed' when crops were kept), or re-enroll everyone with the new model."
        )


class Matcher:
    def __init__(self, gallery: Gallery, model_id: str, threshold: float, margin: float = 0.0,
                 reload_interval: float = 1.0) -> None:
        self.gallery = gallery
        self.model_id = model_id
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.reload_interval = reload_interval
        self._matrix: GalleryMatrix | None = None
        self._data_version = -1
        self._checked_at = 0.0
        self.reload()

    @property
    def identities(self) -> int:
        return len(self._matrix.names) if self._matrix else 0

    @property
    def samples(self) -> int:
        return len(self._matrix.person_ids) if self._matrix else 0

    def reload(self) -> None:
        check_gallery_model(self.gallery, self.model_id)
        self._data_version = self.gallery.data_version()
        self._matrix = self.gallery.matrix(self.model_id)
        self._order_groups()
        log.info("gallery loaded: %d people, %d samples (version %d)", self.identities, self.samples, self._matrix.version)

    def _order_groups(self) -> None:
        ids = self._matrix.person_ids
        # Rows come sorted by person, so reduceat over group starts gives the
        # per-person minimum without a Python loop.
        if len(ids):
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        else:
            starts = np.zeros(0, np.int64)
        self._starts = starts
        self._group_ids = ids[starts] if len(ids) else ids

    def maybe_reload(self, now: float | None = None) -> bool:
        """Reload if another process committed a change to people or samples."""
        now = time.monotonic() if now is None else now
        if now - self._checked_at < self.reload_interval:
            return False
        self._checked_at = now
        data_version = self.gallery.data_version()
        if data_version == self._data_version:
            return False
        self._data_version = data_version
        if self.gallery.version() == self._matrix.version:
            return False  # someone else wrote events only
        self.reload()
        return True

    def match(self, embeddings: np.ndarray) -> list[Match]:
        embeddings = np.atleast_2d(embeddings)
        if self.samples == 0:
            return [Match(None, None, float("inf"), float("inf"), self.threshold, self.margin) for _ in embeddings]
        distances = l2_distances(embeddings, self._matrix.embeddings)
        per_person = np.minimum.reduceat(distances, self._starts, axis=1)
        matches = []
        for row in per_person:
            order = np.argsort(row)
            best = order[0]
            second = float(row[order[1]]) if len(order) > 1 else float("inf")
            person_id = int(self._group_ids[best])
            matches.append(
                Match(person_id, self._matrix.names[person_id], float(row[best]), second, self.threshold, self.margin)
            )
        return matches
