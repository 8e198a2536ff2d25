"""Live enrollment: collect N good samples of one person from camera frames.

:class:`LiveEnrollment` is fed frames (the image plus the detector's faces) and
answers with events for the terminal: ``rejected`` (why), ``accepted``,
``warning``.  Nothing touches the gallery until :func:`commit` writes all the
samples in one transaction, so a session cancelled or killed half-way leaves
no half-enrolled person.  The same class runs inside the recognizer service
(fed by its frame loop, see :mod:`edge.enrollment.control`) and in the
``edge enroll add`` process when no service is running (:func:`run_local`).
"""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..embedder import Embedder
from .store import png_bytes, store_captures
from ..gallery import Gallery
from ..types import Face
from .quality import Metrics, Reason, SessionGuard, Thresholds, assess

log = logging.getLogger(__name__)


def refusal_reason(verdict) -> Reason:
    """What the person at the door is told when a face check turned their face down."""
    if verdict.attack:
        return Reason("spoof", "that looks like a photo or a screen, not a live face: take the photo or phone "
                               "away and look at the camera yourself")
    if verdict.code == "too_close":  # the same word as the quality gate's, so the person hears one instruction
        return Reason("too_close", verdict.reason)
    return Reason("refused", f"the {verdict.check} check turned the face down ({verdict.reason or 'no reason'})")


@dataclass(frozen=True)
class Sample:
    embedding: np.ndarray
    crop: np.ndarray
    score: float
    metrics: Metrics
    capture_id: str


class LiveEnrollment:
    def __init__(self, name: str, wanted: int, thresholds: Thresholds, guard: SessionGuard, embedder: Embedder,
                 *, min_interval: float = 0.3, report_interval: float = 1.0, want_crops: bool = False) -> None:
        self.name = name
        self.wanted = wanted
        self.t = thresholds
        self.guard = guard
        self.embedder = embedder
        self.min_interval = min_interval
        self.report_interval = report_interval
        self.want_crops = want_crops
        self.samples: list[Sample] = []
        self.rejections: collections.Counter = collections.Counter()
        self.warnings: list[str] = []
        self.frames = 0
        self.last_frame_at: float | None = None
        self._last_accept = -1e9
        self._last_report: tuple[str, float] | None = None
        self.cancelled = threading.Event()

    @property
    def done(self) -> bool:
        return len(self.samples) >= self.wanted

    def offer(self, image: np.ndarray, faces: Sequence[Face], timestamp: float | None = None, *,
              crops: Sequence[np.ndarray] = (), embeddings: np.ndarray | None = None,
              refused: Sequence = ()) -> list[dict]:
        """One frame in; the events it produced out (most frames: none or one).

        ``crops``/``embeddings``: what the frame loop already made of ``faces`` (used, not redone);
        ``refused``: (face, verdict) pairs a face check turned down - never a sample.
        """
        if self.done or self.cancelled.is_set():
            return []
        now = time.monotonic() if timestamp is None else timestamp
        self.frames += 1
        self.last_frame_at = now
        events: list[dict] = []
        single = len(faces) == 1 and len(crops) == 1
        assessment = assess(image, faces, self.t, live=True, crop_size=self.embedder.input_size,
                            crop=crops[0] if single else None)
        reasons = [refusal_reason(verdict) for _, verdict in refused[:1]] + assessment.reasons
        if assessment.ok and not refused:
            if now - self._last_accept < self.min_interval:
                return []  # a good frame, but too soon after the last sample to be a different one
            reused = single and embeddings is not None and assessment.crop is crops[0]
            embedding = embeddings[0] if reused else self.embedder.embed_one(assessment.crop)
            verdict = self.guard.check(embedding)
            for message in verdict.warnings:
                self.warnings.append(message)
                events.append({"event": "warning", "message": message})
            if verdict.ok:
                self.guard.accept(embedding)
                sample = Sample(embedding, assessment.crop, assessment.face.score, assessment.metrics, uuid.uuid4().hex)
                self.samples.append(sample)
                self._last_accept = now
                self._last_report = None
                event = {"event": "accepted", "count": len(self.samples), "total": self.wanted,
                         "metrics": assessment.metrics.as_dict()}
                if self.want_crops:
                    event["crop"] = base64.b64encode(png_bytes(sample.crop)).decode("ascii")
                events.append(event)
                return events
            reasons = list(verdict.reasons)
        for r in reasons:
            self.rejections[r.code] += 1
        primary = reasons[0].code
        if (self._last_report is None or self._last_report[0] != primary
                or now - self._last_report[1] >= self.report_interval):
            self._last_report = (primary, now)
            events.append({"event": "rejected", "reasons": [r.as_dict() for r in reasons]})
        return events


def commit(gallery: Gallery, session: LiveEnrollment, model_id: str, dtype: str = "float32",
           keep_crops: bool = False, via: str = "live", companions=()) -> int:
    """Write every sample of a finished session in one transaction; returns the person id.

    ``companions`` (the two-stage confirming model) embed the same crops, stored alongside.
    """
    samples = session.samples
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    person_id = store_captures(
        gallery, session.name, [s.crop for s in samples], np.stack([s.embedding for s in samples]), model_id,
        companions=companions, dtype=dtype, quality=[s.score for s in samples],
        source=[f"{via}:{when}"] * len(samples), capture_ids=[s.capture_id for s in samples], keep_crops=keep_crops)
    gallery.log_event("enrolled", name=session.name, person_id=person_id, model_id=model_id,
                      detail={"samples": len(samples), "via": via, "warnings": session.warnings[:5]})
    return person_id


def start_session(gallery: Gallery, name: str, wanted: int, config, embedder: Embedder, threshold: float,
                  *, allow_lookalike: bool = False, want_crops: bool = False) -> LiveEnrollment:
    """A session against the gallery as it is now (validates the name and the model first)."""
    from ..gallery import validate_name
    from ..matcher import check_gallery_model

    name = validate_name(name)
    check_gallery_model(gallery, embedder.model_id, embedder.legacy_model_id)
    t = Thresholds.from_config(config.enrollment)
    guard = SessionGuard(name, gallery.matrix(embedder.model_id), threshold, t, allow_lookalike)
    return LiveEnrollment(name, wanted, t, guard, embedder, min_interval=config.enrollment.min_sample_interval,
                          want_crops=want_crops)


def run_local(config, name: str, wanted: int, on_event: Callable[[dict], None], *, timeout: float,
              keep_crops: bool = False, allow_lookalike: bool = False, want_crops: bool = False,
              source=None, stop: threading.Event | None = None) -> dict:
    """No service running: open the camera here and do the same as the service would."""
    from ..app import build_companions, build_detector, build_embedder, effective_threshold
    from ..camera import open_source
    from ..errors import CameraError
    from .errors import EnrollmentError

    detector, embedder = build_detector(config), build_embedder(config)
    threshold = effective_threshold(config, embedder)
    with Gallery(config.gallery_path()) as gallery:
        session = start_session(gallery, name, wanted, config, embedder, threshold,
                                allow_lookalike=allow_lookalike, want_crops=want_crops)
        on_event({"event": "started", "name": session.name, "samples": wanted, "model": embedder.model_id,
                  "threshold": threshold, "where": "local camera"})
        source = source if source is not None else open_source(config)
        deadline = time.monotonic() + timeout
        with source:
            while not session.done:
                if stop is not None and stop.is_set():
                    raise EnrollmentError("cancelled: nothing was saved")
                if time.monotonic() > deadline:
                    raise EnrollmentError(
                        f"timed out after {timeout:.0f} s with {len(session.samples)}/{wanted} good samples; "
                        f"nothing was saved ({summary_line(session)})")
                frame = source.read()
                if frame is None:
                    raise CameraError(
                        f"the camera ended after {session.frames} frames with {len(session.samples)}/{wanted} "
                        f"good samples; nothing was saved ({summary_line(session)})")
                for event in session.offer(frame.main, detector.detect(frame), frame.timestamp):
                    on_event(event)
        person_id = commit(gallery, session, embedder.model_id, config.gallery.embedding_dtype, keep_crops,
                           via="live-local", companions=build_companions(config, embedder.model_id))
        total = next((p.samples for p in gallery.people() if p.id == person_id), len(session.samples))
    return done_event(session, embedder.model_id, total)


def summary_line(session: LiveEnrollment) -> str:
    if not session.rejections:
        return "no rejected frames"
    return "rejected frames: " + ", ".join(f"{k} {v}" for k, v in session.rejections.most_common())


def done_event(session: LiveEnrollment, model_id: str, total: int) -> dict:
    return {"event": "done", "name": session.name, "added": len(session.samples), "total_samples": total,
            "model": model_id, "frames": session.frames, "rejections": dict(session.rejections),
            "warnings": session.warnings}
