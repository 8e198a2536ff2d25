"""Quality gates shared by live and bulk enrollment.

A sample goes into the gallery only if the face is

* the only face in view (live: a second face makes it ambiguous who enrolls),
* big enough (``min_face_px``: too far) and, live, not too big or cut off (too close),
* confidently detected (``min_score``),
* sharp: variance of the Laplacian on the aligned 112x112 gray crop,
* well exposed: mean gray of the crop's centre and the fraction of clipped pixels,
* frontal enough: yaw, pitch and roll estimated from the 5 landmarks alone,

and, across the samples of one session (:class:`SessionGuard`),

* not a near copy of a sample already accepted (``min_sample_distance``),
* not closer to another enrolled person than to its own samples (names both),
* for a new person, not already enrolled under another name (within the
  recognition threshold), with a warning when merely close.

Eyes closed cannot be told from 5 landmarks: YuNet places the eye points on
closed eyes as well.  The gates that approximate it are pose (turned away)
and the detector score.  ``python -m edge.enrollment.measure`` measures the
defaults' pass rates (how they were chosen); on 300 images per set (seed 0):
UTKFace photos 91% pass, clean door-like frames with a 200 px face 97%,
Gaussian blur s=2.5 65%, 15 px motion blur 41%, dark or bright frames, a
~55 px face (28%), a face filling the frame and two faces are turned away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ..align import ALIGNED_SIZE, align_face
from ..gallery import GalleryMatrix
from ..matcher import l2_distances
from ..types import Face

# Where the nose tip sits between the eye line (0) and the mouth line (1) on a
# frontal face, as YuNet places the landmarks: 0.57, the median over 120
# UTKFace portraits (the ArcFace template's 0.495 reads as 10 deg "looking down").
_FRONTAL_NOSE_RATIO = 0.57
# Depth of the nose tip in front of the eyes, relative to the inter-ocular
# distance, and relative to the eye-mouth height (anthropometric averages).
_NOSE_DEPTH_PER_IOD = 0.5
_NOSE_DEPTH_PER_HEIGHT = 0.43


@dataclass(frozen=True)
class Reason:
    """Why a frame or file was not taken; ``message`` is what the person at the door is told."""

    code: str
    message: str

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Thresholds:
    min_face_px: float = 64
    max_face_fraction: float = 0.8
    min_score: float = 0.85
    min_sharpness: float = 60.0
    min_brightness: float = 50.0
    max_brightness: float = 205.0
    max_clipped: float = 0.15
    max_yaw: float = 25.0
    max_pitch: float = 25.0
    max_roll: float = 20.0
    min_sample_distance: float = 0.25
    duplicate_warn_margin: float = 0.1

    @classmethod
    def from_config(cls, enrollment) -> "Thresholds":
        return cls(**{f: getattr(enrollment, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Metrics:
    size: float = 0.0
    frame_fraction: float = 0.0
    score: float = 0.0
    sharpness: float = 0.0
    brightness: float = 0.0
    clipped: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


@dataclass
class Assessment:
    face: Face | None
    crop: np.ndarray | None
    metrics: Metrics | None
    reasons: list[Reason] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the 5 landmarks (right eye, left eye, nose, mouth corners).

    Roll is the angle of the eye line.  After removing it, yaw follows from the
    nose's horizontal offset from the eye midpoint per inter-ocular distance
    (offset / iod = depth/iod * tan(yaw)), pitch from where the nose sits
    between the eye line and the mouth line compared with a frontal face.
    Signs: yaw > 0 nose towards image right, pitch > 0 looking down.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    right_eye, left_eye, nose = pts[0], pts[1], pts[2]
    mouth = (pts[3] + pts[4]) / 2
    eye_vec = left_eye - right_eye
    iod = float(np.hypot(*eye_vec))
    if iod < 1e-6:
        return 90.0, 90.0, 0.0
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    c, s = eye_vec / iod
    rot = np.array([[c, s], [-s, c]])  # rotates the eye line onto the x axis
    mid = (right_eye + left_eye) / 2
    nose_r = rot @ (nose - mid)
    mouth_r = rot @ (mouth - mid)
    yaw = math.degrees(math.atan((nose_r[0] / iod) / _NOSE_DEPTH_PER_IOD))
    height = mouth_r[1]
    if height <= 1e-6:
        return yaw, 90.0, roll
    pitch = math.degrees(math.atan((nose_r[1] / height - _FRONTAL_NOSE_RATIO) / _NOSE_DEPTH_PER_HEIGHT))
    return yaw, pitch, roll


def _centre(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    return gray[int(h * 0.18): int(h * 0.9), int(w * 0.18): int(w * 0.82)]


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian over the face part of an aligned crop (higher: sharper)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    if gray.shape[0] != ALIGNED_SIZE:
        gray = cv2.resize(gray, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(_centre(gray), cv2.CV_64F).var())


def exposure(crop: np.ndarray) -> tuple[float, float]:
    """(mean gray, fraction of clipped pixels) over the face part of an aligned crop."""
    gray = _centre(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop)
    clipped = float(np.count_nonzero((gray <= 5) | (gray >= 250))) / gray.size
    return float(gray.mean()), clipped


def _cut_off(face: Face, width: int, height: int) -> bool:
    x, y, w, h = face.box
    margin = 0.02 * min(width, height)
    inside = (x >= -margin and y >= -margin and x + w <= width + margin and y + h <= height + margin)
    pts = face.landmarks
    lm_inside = bool(np.all((pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)))
    return not (inside and lm_inside)


def assess(image: np.ndarray, faces: Sequence[Face], t: Thresholds, *, live: bool,
           crop_size: int = ALIGNED_SIZE, crop: np.ndarray | None = None) -> Assessment:
    """Apply every per-frame gate; all failing gates are reported, the most actionable first.

    ``live``: a door-camera frame (too close and cut-off faces are refused);
    otherwise a photo, where a face filling the picture is fine.  ``crop``: the
    single face's aligned crop when the frame loop already made it.
    """
    if not faces:
        return Assessment(None, None, None, [Reason("no_face", "no face in view: stand in front of the camera")])
    face = max(faces, key=lambda f: f.size)
    reasons: list[Reason] = []
    if len(faces) > 1:
        reasons.append(Reason(
            "two_faces",
            f"{len(faces)} faces in view: only the person enrolling may be in front of the camera"
            if live else f"{len(faces)} faces in the picture: enrollment needs exactly one",
        ))
    height, width = image.shape[:2]
    yaw, pitch, roll = pose_from_landmarks(face.landmarks)
    if crop is None or len(faces) != 1 or crop.shape[0] != crop_size:
        crop = align_face(image, face.landmarks, crop_size)
    sharp = sharpness(crop)
    bright, clipped = exposure(crop)
    metrics = Metrics(
        size=face.size, frame_fraction=face.box[3] / height, score=face.score, sharpness=sharp,
        brightness=bright, clipped=clipped, yaw=yaw, pitch=pitch, roll=roll,
    )
    if face.size < t.min_face_px:
        reasons.append(Reason("too_far", f"too far: come closer (face {face.size:.0f} px, needs {t.min_face_px:.0f})"
                              if live else f"face too small in the picture ({face.size:.0f} px, needs {t.min_face_px:.0f})"))
    if live and metrics.frame_fraction > t.max_face_fraction:
        reasons.append(Reason("too_close", f"too close: step back (face fills {metrics.frame_fraction:.0%} of the frame)"))
    elif live and _cut_off(face, width, height):
        reasons.append(Reason("too_close", "face cut off by the edge of the picture: step back or to the middle"))
    if abs(yaw) > t.max_yaw:
        reasons.append(Reason("turned_away", f"turned away: look straight at the camera (yaw {yaw:+.0f} deg)"))
    if abs(pitch) > t.max_pitch:
        word = "looking down" if pitch > 0 else "looking up"
        reasons.append(Reason("turned_away", f"{word}: look straight at the camera (pitch {pitch:+.0f} deg)"))
    if abs(roll) > t.max_roll:
        reasons.append(Reason("tilted", f"head tilted: hold it upright (roll {roll:+.0f} deg)"))
    if bright < t.min_brightness:
        reasons.append(Reason("too_dark", f"too dark: more light on the face (brightness {bright:.0f}, needs {t.min_brightness:.0f})"))
    elif bright > t.max_brightness:
        reasons.append(Reason("too_bright", f"too bright: less light on the face (brightness {bright:.0f}, max {t.max_brightness:.0f})"))
    elif clipped > t.max_clipped:
        reasons.append(Reason("too_bright" if bright >= 128 else "too_dark",
                              f"over- or under-exposed: {clipped:.0%} of the face is clipped"))
    if sharp < t.min_sharpness:
        reasons.append(Reason("blurred", f"blurred: hold still (sharpness {sharp:.0f}, needs {t.min_sharpness:.0f})"))
    if face.score < t.min_score:
        reasons.append(Reason("low_score", f"face not clearly visible (detector score {face.score:.2f}, needs {t.min_score:.2f})"))
    return Assessment(face, crop, metrics, reasons)


@dataclass(frozen=True)
class IdentityCheck:
    """What the session guard says of one new sample: consistent with the session, unlike everyone else?"""

    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...]
    own_distance: float
    other_name: str | None
    other_distance: float

    @property
    def ok(self) -> bool:
        return not self.reasons


def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances from one embedding to each row of ``b``."""
    if len(b) == 0:
        return np.zeros(0, np.float32)
    return l2_distances(a[None, :], b)[0]


class SessionGuard:
    """Diversity and identity safety across the samples of one enrollment session.

    ``matrix`` is the gallery as it stood when the session began (one model);
    ``threshold`` is the recognizer's L2 acceptance threshold.
    """

    def __init__(self, name: str, matrix: GalleryMatrix, threshold: float, t: Thresholds,
                 allow_lookalike: bool = False) -> None:
        self.name = name
        self.threshold = float(threshold)
        self.t = t
        self.allow_lookalike = allow_lookalike
        self.accepted: list[np.ndarray] = []
        self.warned: set[str] = set()
        own_id = next((pid for pid, n in matrix.names.items() if n == name), None)
        self.is_new = own_id is None
        ids = matrix.person_ids
        if len(ids):
            own_rows = ids == own_id if own_id is not None else np.zeros(len(ids), bool)
            self._own = matrix.embeddings[own_rows]
            self._others = matrix.embeddings[~own_rows]
            self._other_ids = ids[~own_rows]
        else:
            self._own = self._others = np.zeros((0, 1), np.float32)
            self._other_ids = np.zeros(0, np.int64)
        self._names = dict(matrix.names)

    def check(self, embedding: np.ndarray) -> IdentityCheck:
        e = np.asarray(embedding, np.float32).ravel()
        reasons: list[Reason] = []
        warnings: list[str] = []
        session = np.stack(self.accepted) if self.accepted else np.zeros((0, e.size), np.float32)
        d_session = _l2(e, session)
        if len(d_session) and float(d_session.min()) < self.t.min_sample_distance:
            reasons.append(Reason(
                "near_duplicate",
                "same as a sample already taken: turn the head a little or change expression",
            ))
        own = np.concatenate([d_session, _l2(e, self._own)])
        own_d = float(own.min()) if len(own) else math.inf
        other_name, other_d = None, math.inf
        d_other = _l2(e, self._others)
        if len(d_other):
            i = int(np.argmin(d_other))
            other_name, other_d = self._names[int(self._other_ids[i])], float(d_other[i])
        if other_name is not None:
            if other_d < own_d:
                if math.isfinite(own_d):
                    reasons.append(Reason(
                        "other_person",
                        f"looks more like {other_name} (distance {other_d:.2f}) than {self.name} ({own_d:.2f}): "
                        "is this the right person?",
                    ))
                elif other_d <= self.threshold and not self.allow_lookalike:
                    reasons.append(Reason(
                        "other_person",
                        f"this face is already enrolled as {other_name} (distance {other_d:.2f} <= {self.threshold:.2f}); "
                        f"not adding it as {self.name}",
                    ))
            if self.is_new and other_d <= self.threshold + self.t.duplicate_warn_margin and other_name not in self.warned:
                if not any(r.code == "other_person" for r in reasons):
                    self.warned.add(other_name)
                    warnings.append(
                        f"{self.name} is close to the enrolled {other_name} (distance {other_d:.2f}, threshold "
                        f"{self.threshold:.2f}): possible duplicate identity or look-alike"
                    )
        return IdentityCheck(tuple(reasons), tuple(warnings), own_d, other_name, other_d)

    def accept(self, embedding: np.ndarray) -> None:
        self.accepted.append(np.asarray(embedding, np.float32).ravel())
