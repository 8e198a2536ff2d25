"""The recognizer: models built once at start-up, then the frame loop.

Everything that can fail at start (config, model integrity, gallery/model
mismatch, camera) fails before the first frame, with an EdgeError that says
why; the door stays locked because nothing was ever granted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .bundle import load_bundle
from .checks import build_checks
from .camera import FrameSource, open_source
from .config import DEMO_DIR, Config
from .decide import AttackAlarm, Decider
from .detect import Detector
from .embedder import Embedder
from .errors import ConfigError, GalleryError, ModelError
from .gallery import Gallery
from .matcher import Matcher
from .pipeline import FrameResult, analyse_frame, crops_for
from .registry import Registry
from .types import Decision, Outcome

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    frames: int = 0
    faces: int = 0
    decisions: int = 0
    granted: int = 0
    started: float = field(default_factory=time.monotonic)
    first_frame_at: float | None = None
    last_decision: Decision | None = None

    @property
    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


DETECTORS = Registry("detector backend", "edge.detectors", {
    "opencv-yunet": "edge.detect:YuNetDetector",
    "tflite-yunet": "edge.detect:YuNetTFLiteDetector",
})
EMBEDDERS = Registry("embedder backend", "edge.embedders", {
    "tflite": "edge.embedder:TFLiteEmbedder",
    "opencv-dnn": "edge.embedder:OnnxEmbedder",
    "onnxruntime": "edge.embedder:OnnxRuntimeEmbedder",  # needs the optional onnxruntime (extra "onnx")
})


def build_detector(config: Config) -> Detector:
    bundle = load_bundle(config.model_path(config.detector.model), expect_kind="detector")
    return DETECTORS.load(bundle.backend).from_config(bundle, config)


def build_embedder(config: Config, model: str | None = None) -> Embedder:
    """The embedder of ``model`` (default ``embedder.model``), run by the backend its manifest names."""
    bundle = load_bundle(config.model_path(model or config.embedder.model), expect_kind="embedder")
    return EMBEDDERS.load(bundle.backend).from_config(bundle, config)


def build_companions(config: Config, main_model_id: str) -> list[Embedder]:
    """Embedders whose samples enrollment stores beside the main one's (the two-stage confirmer).

    ``main_model_id`` is the already loaded main embedder's, so its bundle is not hashed twice.
    """
    if not config.embedder.confirm_model:
        return []
    confirmer = build_embedder(config, config.embedder.confirm_model)
    if confirmer.model_id == main_model_id:
        raise ConfigError(
            f"embedder.confirm_model is the same model as embedder.model ({confirmer.model_id}); "
            "two-stage needs a different, more accurate model (or leave confirm_model empty)"
        )
    return [confirmer]


def effective_threshold(config: Config, embedder: Embedder, override: float | None = None) -> float:
    override = config.decision.threshold if override is None else override
    if override > 0:
        span = embedder.bundle.threshold_range
        if span is not None and not span[0] <= override <= span[1]:
            tuning = embedder.bundle.manifest.get("threshold", {})
            log.warning(
                "THRESHOLD OVERRIDE %.4f for %s is outside the range its tuning measured (L2 %.4f..%.4f on %s): %s",
                override, embedder.model_id, span[0], span[1], tuning.get("source", "?"),
                "impostors are accepted more often than at any operating point the tuning measured" if override > span[1]
                else "tighter than the tightest measured operating point: enrolled people will mostly be turned away",
            )
        return override
    tuned = embedder.bundle.threshold
    if tuned is None:
        raise ModelError(
            f"{embedder.bundle.root}: the manifest has no tuned threshold and no threshold is configured; "
            "run 'edge-model tune' on the bundle or set decision.threshold (decision.confirm_threshold)"
        )
    return tuned


def enroll_demo_people(gallery: Gallery, detector, embedder, companions=()) -> list[str]:
    """Enroll the bundled, credited demo faces (one folder per person) if they are missing."""
    from .enrollment.store import enroll_files

    enrolled = []
    root = DEMO_DIR / "enroll"
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = person_dir.name.replace("_", " ")
        if gallery.has_person(name):
            continue
        images = sorted(p for p in person_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        enroll_files(gallery, detector, embedder, name, images, companions=companions)
        enrolled.append(name)
    return enrolled


class Recognizer:
    """Owns the models, the gallery handle, the matcher, the decider and the frame source."""

    def __init__(self, config: Config, source: FrameSource | None = None, checks=None) -> None:
        self.config = config
        self.detector = build_detector(config)
        self.checks = build_checks(config) if checks is None else list(checks)
        self.embedder = build_embedder(config)
        self.threshold = effective_threshold(config, self.embedder)
        self.companions = build_companions(config, self.embedder.model_id)
        self.gallery = Gallery(config.gallery_path())
        for model in (self.embedder, *self.companions):
            self.gallery.adopt_model_id(model.legacy_model_id, model.model_id)
        if config.demo.enroll:
            added = enroll_demo_people(self.gallery, self.detector, self.embedder, self.companions)
            if added:
                log.info("demo gallery: enrolled %s", ", ".join(added))
        self.matcher = Matcher(
            self.gallery, self.embedder.model_id, self.threshold, config.decision.margin, config.gallery.reload_interval
        )
        # Two-stage: the cheap model screens every frame; the accurate one confirms once per grant.
        self.confirmer = self.companions[0] if self.companions else None
        self.confirm_matcher = None
        if self.confirmer is not None:
            self.confirm_matcher = Matcher(
                self.gallery, self.confirmer.model_id,
                effective_threshold(config, self.confirmer, config.decision.confirm_threshold),
                config.decision.margin, config.gallery.reload_interval,
            )
        d = config.decision
        self.decider = Decider(d.frames_required, d.window_frames, d.window_seconds, d.cooldown_seconds, self.embedder.model_id)
        self.alarm = AttackAlarm(config.liveness.alert_attacks, config.liveness.alert_window_seconds)
        self.source = source if source is not None else open_source(config)
        log.info(
            "recognizer ready to start: detector %s, embedder %s (%s, %d threads; licence: %s), threshold %.3f, "
            "%d people", config.detector.model, self.embedder.model_id, self.embedder.runtime, config.embedder.threads,
            self.embedder.bundle.manifest.get("licence", "?"), self.threshold, self.matcher.identities,
        )

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        self.matcher.threshold = threshold

    def apply_decision_config(self, config: Config) -> None:
        """Everything of a reloaded config that takes effect without reloading models or the camera.

        Thresholds are resolved first, so a config that cannot be applied changes nothing.
        """
        threshold = effective_threshold(config, self.embedder)
        confirm = (effective_threshold(config, self.confirmer, config.decision.confirm_threshold)
                   if self.confirmer is not None else None)
        d = config.decision
        self.set_threshold(threshold)
        self.matcher.margin = d.margin
        if self.confirm_matcher is not None:
            self.confirm_matcher.threshold = confirm
            self.confirm_matcher.margin = d.margin
        self.decider.reconfigure(d.frames_required, d.window_frames, d.window_seconds, d.cooldown_seconds)
        for check in self.checks:
            check.reload(config)
        self.alarm.count, self.alarm.window_seconds = config.liveness.alert_attacks, config.liveness.alert_window_seconds
        self.config = dataclasses.replace(self.config, decision=config.decision, liveness=config.liveness)

    def close(self) -> None:
        self.gallery.close()

    def run(
        self,
        on_decision: Callable[[Decision], None] | None = None,
        on_frame: Callable[[FrameResult, RunStats], None] | None = None,
        on_started: Callable[[RunStats], None] | None = None,
        stop: threading.Event | None = None,
        max_frames: int | None = None,
    ) -> RunStats:
        """Run until the source ends, ``stop`` is set or ``max_frames`` frames were processed.

        ``on_started`` fires once the camera has delivered its first frame: the
        moment a service may report READY.
        """
        stats = RunStats()
        with self.source:
            while not (stop is not None and stop.is_set()):
                if max_frames is not None and stats.frames >= max_frames:
                    break
                frame = self.source.read()
                if frame is None:
                    log.info("frame source ended after %d frames", stats.frames)
                    break
                if stats.first_frame_at is None:
                    stats.first_frame_at = time.monotonic()
                    if on_started is not None:
                        on_started(stats)
                self.matcher.maybe_reload()
                result = analyse_frame(frame, self.detector, self.embedder, self.matcher, checks=self.checks)
                stats.frames += 1
                stats.faces += result.face_count
                decision = self.decider.update(frame.index, frame.timestamp, list(result.matches),
                                               [verdict for _, verdict in result.refused])
                if decision is not None and decision.outcome is Outcome.GRANTED and self.confirmer is not None:
                    decision = self._confirm(decision, result)
                if decision is not None and decision.outcome is Outcome.SPOOF:
                    decision = dataclasses.replace(decision, alert=self.alarm.observe(decision.timestamp))
                if on_frame is not None:
                    on_frame(result, stats)
                if decision is not None:
                    stats.decisions += 1
                    stats.last_decision = decision
                    if decision.outcome is Outcome.GRANTED:
                        stats.granted += 1
                    # Debug only: edge run prints each decision and edge serve journals it as an event.
                    log.debug("decision: %s", decision.describe())
                    # The door first: an unlock must not wait for (or die with) an audit write.
                    if on_decision is not None:
                        on_decision(decision)
                    self._record(decision)
        return stats

    def _confirm(self, decision: Decision, result: FrameResult) -> Decision:
        """Two-stage: embed the granting face once with the accurate model; unconfirmed means unknown."""
        self.confirm_matcher.maybe_reload()
        index = next(i for i, m in enumerate(result.matches) if m.person_id == decision.person_id and m.accepted)
        crop = result.crops[index]
        if crop.shape[0] != self.confirmer.input_size:
            crop = crops_for(result.frame, [result.faces[index]], self.confirmer.input_size)[0]
        match = self.confirm_matcher.match(self.confirmer.embed([crop]))[0]
        if match.accepted and match.person_id == decision.person_id:
            log.info("two-stage: %s confirmed by %s (distance %.3f)", decision.name, self.confirmer.model_id,
                     match.distance)
            return decision
        self.decider.revoke(decision.person_id)
        log.warning("two-stage: %s (screen distance %.3f) not confirmed by %s (best %s at %.3f): not granted",
                    decision.name, decision.distance, self.confirmer.model_id, match.name, match.distance)
        return dataclasses.replace(decision, outcome=Outcome.UNKNOWN, name=None, person_id=None,
                                   distance=match.distance, model=self.confirmer.model_id)

    def _record(self, decision: Decision) -> None:
        """Audit trail in SQLite; a full or failing disk is logged, not fatal (journald has the line too)."""
        try:
            if decision.outcome is Outcome.GRANTED:
                self.gallery.touch_seen(decision.person_id)
            self.gallery.log_event(
                decision.outcome.value, name=decision.name, person_id=decision.person_id,
                distance=decision.distance, frames=decision.frames, model_id=decision.model,
                detail=decision.check_detail() or None,
            )
        except GalleryError as exc:
            log.error("decision not written to the audit table: %s", exc)
