"""Face detection behind a small abstract API; YuNet through ``cv2.FaceDetectorYN``.

The detector runs on the lores image and returns faces in main-image
coordinates, so the aligner crops from full resolution.
"""

from __future__ import annotations

import abc
import logging

import cv2
import numpy as np

from .bundle import Bundle
from .errors import ModelError
from .types import Face, Frame

log = logging.getLogger(__name__)


class Detector(abc.ABC):
    """Finds faces; one instance is built at start-up and reused for every frame.

    ``min_face_size`` is in the pixels of the image faces are cropped from
    (``frame.main``): on a lores image it is scaled down accordingly.
    """

    bundle: Bundle
    min_face_size: float = 0

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "Detector":
        """Build the backend for ``bundle`` with the settings of ``config.detector`` (see :data:`edge.app.DETECTORS`).

        Backends the model tool builds directly (its TFLite YuNet study) do not override it.
        """
        raise ModelError(f"{cls.__name__} is a model-tool backend; a device bundle cannot select it")

    @abc.abstractmethod
    def detect_image(self, image: np.ndarray, min_size: float | None = None) -> list[Face]:
        """Faces in ``image`` coordinates, best score first, no smaller than ``min_size``
        (default ``min_face_size``) pixels of ``image``."""

    def detect(self, frame: Frame) -> list[Face]:
        """Detect on ``frame.lores`` and map the result to ``frame.main`` coordinates."""
        s = frame.lores_scale
        faces = self.detect_image(frame.lores, self.min_face_size / s)
        if s == 1.0:
            return faces
        return [
            Face(
                box=tuple(v * s for v in face.box),
                score=face.score,
                landmarks=(face.landmarks * s).astype(np.float32),
            )
            for face in faces
        ]


class YuNetDetector(Detector):
    """YuNet (MIT) via OpenCV's FaceDetectorYN, with minimum size and score filters."""

    def __init__(
        self,
        bundle: Bundle,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        min_face_size: int = 40,
        top_k: int = 50,
    ) -> None:
        self.bundle = bundle
        self.score_threshold = score_threshold
        self.min_face_size = min_face_size
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(bundle.model_path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as exc:
            raise ModelError(f"detector {bundle.model_path} could not be loaded: {exc}") from exc
        self._input_size = (320, 320)

    @classmethod
    def from_config(cls, bundle: Bundle, config) -> "YuNetDetector":
        d = config.detector
        return cls(bundle, d.score_threshold, d.nms_threshold, d.min_face_size)

    def detect_image(self, image: np.ndarray, min_size: float | None = None) -> list[Face]:
        min_size = self.min_face_size if min_size is None else min_size
        height, width = image.shape[:2]
        if (width, height) != self._input_size:
            self._net.setInputSize((width, height))
            self._input_size = (width, height)
        _, raw = self._net.detect(image)
        if raw is None:
            return []
        faces = []
        for row in raw:
            x, y, w, h = (float(v) for v in row[:4])
            score = float(row[14])
            if score < self.score_threshold or min(w, h) < min_size:
                continue
            faces.append(
                Face(box=(x, y, w, h), score=score, landmarks=row[4:14].reshape(5, 2).astype(np.float32))
            )
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces
