"""``edge serve``: the recognizer as a systemd service (``Type=notify``).

Life cycle, in the order systemd sees it:

1. Config loaded and validated, model bundles verified and loaded, gallery
   opened (:class:`edge.app.Recognizer`); any :class:`EdgeError` here prints
   one line, sets ``STATUS=`` and exits with the error's status
   (``Restart=on-failure`` retries; a bad config keeps failing with 78).
2. Event sinks and the door client built; extra components started (see
   :data:`COMPONENTS` and :meth:`RecognizerService.add_component`).
3. The camera delivers its first frame -> ``READY=1``.
4. Every processed frame -> ``WATCHDOG=1`` (at most every ``WatchdogSec/2``);
   frame observers called; ``STATUS=`` (fps, faces, last decision) every 2 s.
   A stalled camera or a hung loop stops the pings and systemd restarts us.
5. Decisions: GRANTED -> unlock request to ``edge door``; every decision and
   actuation -> journald (structured) + audit table + sinks.
6. SIGHUP -> threshold, margin, sinks and door client re-read from the config
   file, camera untouched.  SIGTERM/SIGINT -> ``STOPPING=1``, components
   stopped, exit 0.  The door stays locked: only the actuator drives the relay,
   and it ends every pulse on its own.

Extending the service
---------------------
Other features (the enrollment control socket) plug in without editing the
loop: a *component* is any object with ``start()`` and ``stop()``, created by a
factory ``factory(service) -> component | None``.  List the factory in
:data:`COMPONENTS` (imported lazily; a missing module is skipped) or call
:meth:`RecognizerService.add_component` before :meth:`RecognizerService.run`.
Components are started after the models, gallery and sinks exist and before
the camera starts, and stopped (in reverse order) before the gallery closes.
A component that wants frames appends a callable ``(FrameResult, RunStats)``
to ``service.frame_observers`` (called on the frame loop thread; keep it
short, exceptions are logged and swallowed); ``service.decision_observers``
likewise receive each :class:`edge.types.Decision`.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import click

from ..errors import EdgeError
from .events import Event, EventBus, Journal, decision_events
from .notify import Notifier, Watchdog, watchdog_interval

log = logging.getLogger("edge.serve")

# name -> "module:factory"; factory(service) returns an object with start()/stop(), or None.
COMPONENTS: dict[str, str] = {
    "enrollment": "edge.enrollment.control:service_component",
}

STATUS_INTERVAL = 2.0
DOOR_EVENT_KINDS = ("door_opened", "door_closed", "door_forced", "door_left_open", "door_lockout")


class _Terminated(BaseException):
    """Raised by the SIGTERM handler only while the loop is blocked in a camera read."""


class _GuardedSource:
    """Wraps the frame source so that SIGTERM can interrupt a read that never returns."""

    def __init__(self, inner, service: "RecognizerService") -> None:
        self.inner = inner
        self.service = service
        self.name = inner.name

    def start(self) -> None:
        self.inner.start()

    def read(self):
        if self.service.stop_event.is_set():
            return None
        self.service._in_read = True
        try:
            return self.inner.read()
        finally:
            self.service._in_read = False

    def stop(self) -> None:
        self.inner.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _DoorEventPoller(threading.Thread):
    """Copies door-contact and lockout events from the actuator into a queue the frame loop drains."""

    def __init__(self, client, out: queue.Queue, interval: float = 1.0) -> None:
        super().__init__(name="edge-door-events", daemon=True)
        self.client, self.out, self.interval = client, out, interval
        self.halt = threading.Event()
        self.seq: int | None = None

    def run(self) -> None:
        from .lock_client import DoorUnavailable

        while not self.halt.wait(self.interval):
            try:
                if self.seq is None:
                    self.seq = int(self.client.status().get("seq", 0))  # only what happens from now on
                    continue
                reply = self.client.events(self.seq)
                events = reply.get("events", [])
                if events and events[0].get("seq", 0) > self.seq + 1 and self.seq:
                    log.warning("door events %d..%d were lost (actuator restarted?)", self.seq + 1, events[0]["seq"] - 1)
                if reply.get("seq", 0) < self.seq:  # actuator restarted: its numbering began again
                    self.seq = 0
                    continue
                for item in events:
                    self.seq = max(self.seq, item.get("seq", 0))
                    if item.get("event_type") in DOOR_EVENT_KINDS:
                        self.out.put(item)
            except DoorUnavailable:
                pass  # the actuator is restarting; the next poll catches up
            except Exception as exc:  # never let this thread die silently
                log.debug("door event poll: %s", exc)


class RecognizerService:
    def __init__(self, config_path: Path | None, notifier: Notifier | None = None, source=None) -> None:
        from ..config import load_config

        self.config_path = config_path
        self.config = load_config(config_path)
        self.notifier = notifier or Notifier()
        self.watchdog = Watchdog(self.notifier, watchdog_interval())
        self.stop_event = threading.Event()
        self.frame_observers: list[Callable] = []
        self.decision_observers: list[Callable] = []
        self.components: list = []
        self.recognizer = None
        self.bus: EventBus | None = None
        self.door = None
        self._source = source
        self._in_read = False
        self._reload_requested = False
        self._door_events: queue.Queue = queue.Queue()
        self._poller: _DoorEventPoller | None = None
        self._status_at = 0.0
        self._status_frames = 0
        self._last_unlock: str = ""
        self.ready_at: float | None = None

    # -- start -------------------------------------------------------------
    def start(self) -> None:
        """Everything that can fail before the first frame; raises EdgeError with a clear message."""
        from ..app import Recognizer
        from ..camera import open_source
        from ..registry import Registry
        from .sinks import build_sinks

        self.notifier.status("loading models and gallery")
        source = self._source if self._source is not None else open_source(self.config)
        self.recognizer = Recognizer(self.config, source=_GuardedSource(source, self))
        self.bus = EventBus(Journal("edge"), audit=self.recognizer.gallery.log_event, sinks=build_sinks(self.config.events))
        self._build_door(self.config)
        components = Registry("service component", "edge.components", COMPONENTS)
        for name in components.names():
            factory = components.optional(name)
            if factory is None:
                log.debug("component %s not installed", name)
                continue
            self.add_component(factory)
        for component in self.components:
            component.start()

    def add_component(self, factory: Callable[["RecognizerService"], object]) -> None:
        component = factory(self)
        if component is not None:
            self.components.append(component)

    def _build_door(self, config) -> None:
        from .protocol import socket_path
        from .lock_client import DoorClient, DoorUnavailable

        if self._poller is not None:
            self._poller.halt.set()
            self._poller = None
        if not config.door.socket:
            self.door = None
            log.warning("door.socket is empty: decisions are logged, nothing is unlocked")
            return
        self.door = DoorClient(str(socket_path(config)), config.door.request_timeout)
        try:
            state = self.door.status()
            log.info("actuator at %s: relay %s, door %s", self.door.path, "on" if state.get("relay") else "off",
                     state.get("door"))
        except DoorUnavailable as exc:  # not fatal: it may start later, and every unlock says so if not
            log.warning("%s; grants will be logged as unlock_failed until it answers", exc)
        self._poller = _DoorEventPoller(DoorClient(str(socket_path(config)), config.door.request_timeout), self._door_events)
        self._poller.start()

    # -- callbacks from Recognizer.run ------------------------------------------
    def _on_started(self, stats) -> None:
        self.ready_at = time.monotonic()
        r = self.recognizer
        text = f"ready: {r.embedder.model_id}, threshold {r.threshold:.3f}, {r.matcher.identities} people"
        self.notifier.ready(text)
        self.watchdog.kick()
        self.bus.emit(Event("service_started", text, model=r.embedder.model_id), audit=False)

    def _on_frame(self, result, stats) -> None:
        self.watchdog.kick()
        for observer in list(self.frame_observers):
            try:
                observer(result, stats)
            except Exception:
                log.exception("frame observer %r failed", observer)
        while not self._door_events.empty():
            item = self._door_events.get_nowait()
            detail = {k: v for k, v in item.items() if k not in ("event_type", "message", "ts", "seq", "mono", "person")}
            self.bus.emit(Event(item["event_type"], item.get("message", ""), ts=item.get("ts", time.time()), detail=detail))
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        now = time.monotonic()
        if now - self._status_at >= STATUS_INTERVAL:
            fps = (stats.frames - self._status_frames) / (now - self._status_at) if self._status_at else stats.fps
            self._status_at, self._status_frames = now, stats.frames
            self.notifier.status(self.status_line(stats, fps))

    def status_line(self, stats, fps: float) -> str:
        last = stats.last_decision.describe() if stats.last_decision is not None else "none"
        text = f"{fps:.1f} fps, {stats.frames} frames, {stats.faces} faces, {stats.granted} granted; last: {last}"
        return text + (f"; door: {self._last_unlock}" if self._last_unlock else "")

    def _on_decision(self, decision) -> None:
        from ..types import Outcome

        if decision.outcome is Outcome.GRANTED:
            self._unlock(decision)  # first: the door waits for nothing else
        events = decision_events(decision)
        # Recognizer.run already wrote the decision's own audit row; an alert that follows gets one of its own.
        self.bus.emit(events[0], audit=False)
        for event in events[1:]:
            self.bus.emit(event)
        for observer in list(self.decision_observers):
            try:
                observer(decision)
            except Exception:
                log.exception("decision observer %r failed", observer)

    def _unlock(self, decision) -> None:
        from .lock_client import DoorUnavailable

        common = dict(person=decision.name, person_id=decision.person_id, distance=decision.distance,
                      frames=decision.frames, model=decision.model or None)
        if self.door is None:
            return
        try:
            reply = self.door.unlock(decision.name, decision.distance, decision.frames, decision.model)
        except DoorUnavailable as exc:
            self._last_unlock = "actuator unreachable"
            self.bus.emit(Event("unlock_failed", f"unlock for {decision.name} failed: {exc}", **common))
            return
        if reply.get("ok"):
            self._last_unlock = f"unlocked for {decision.name}"
            detail = {k: reply[k] for k in ("pulse_s", "already_on") if k in reply}
            self.bus.emit(Event("unlock", f"door unlocked for {decision.name}", detail=detail, **common))
        else:
            reason = str(reply.get("error", "refused"))
            self._last_unlock = f"refused ({reason})"
            self.bus.emit(Event("unlock_refused", f"actuator refused to unlock for {decision.name}: {reason}",
                                detail={"reason": reason}, **common))

    # -- signals -------------------------------------------------------------------
    def _on_term(self, signum, _frame) -> None:
        self.stop_event.set()
        if self._in_read:
            raise _Terminated()

    def _on_hup(self, signum, _frame) -> None:
        self._reload_requested = True

    def reload(self) -> None:
        """Re-read the config file: [decision] (both thresholds, margin, k/n/window/cooldown), sinks, the door
        client and components' settings (enrollment gates); the camera and the models keep running."""
        from ..config import load_config
        from .sinks import build_sinks

        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            self.recognizer.apply_decision_config(new)
            threshold = self.recognizer.threshold
        except EdgeError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.bus.emit(Event("config_reloaded", f"reload failed, old config kept: {exc}", detail={"ok": False}),
                          audit=False)
            self.notifier.ready()
            return
        restart_needed = [name for name in ("camera", "detector", "embedder", "gallery", "state_dir", "models_dir")
                          if getattr(new, name) != getattr(self.config, name)]
        # Face checks and their models are built once at start; the liveness threshold and alerts apply now.
        if new.decision.face_checks != self.config.decision.face_checks:
            restart_needed.append("decision.face_checks")
        if (new.liveness.models, new.liveness.threads) != (self.config.liveness.models, self.config.liveness.threads):
            restart_needed.append("liveness.models/threads")
        self.bus.replace_sinks(build_sinks(new.events))
        if new.door != self.config.door:
            self._build_door(new)
        self.config = new
        for component in self.components:
            # Components that hold settings (the enrollment gates) take the new config too.
            if hasattr(component, "reload"):
                component.reload(new)
        message = f"config reloaded: threshold {threshold:.3f}, margin {new.decision.margin:.3f}, {len(self.bus.sinks)} sink(s)"
        if restart_needed:
            message += f"; changes to {', '.join(restart_needed)} need a restart"
        self.bus.emit(Event("config_reloaded", message, detail={"ok": True, "threshold": round(threshold, 4)}),
                      audit=False)
        self.notifier.ready()

    # -- run ---------------------------------------------------------------------------
    def run(self, max_frames: int | None = None):
        previous = {sig: signal.signal(sig, self._on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        stats = None
        try:
            stats = self.recognizer.run(on_decision=self._on_decision, on_frame=self._on_frame,
                                        on_started=self._on_started, stop=self.stop_event, max_frames=max_frames)
        except _Terminated:
            log.info("stopped while waiting for a frame")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return stats

    def close(self) -> None:
        self.notifier.stopping()
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("component %r failed to stop", component)
        if self._poller is not None:
            self._poller.halt.set()
        if self.bus is not None:
            self.bus.emit(Event("service_stopped", "recognizer stopped; the door stays locked"), audit=False)
            self.bus.close()
        if self.recognizer is not None:
            self.recognizer.close()


def _cli():
    from ..cli import boundary, config_option

    @click.command("serve")
    @config_option
    @click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after this many frames.")
    @boundary
    def command(config_path, max_frames):
        """Run the recognizer as a service: sd_notify READY/WATCHDOG/STATUS, unlocks via edge door, events."""
        from ..cli import _setup_logging
        from ..config import load_config

        notifier = Notifier()
        try:
            _setup_logging(load_config(config_path).log_level)
            service = RecognizerService(config_path, notifier)
            try:
                service.start()
                stats = service.run(max_frames)
            finally:
                service.close()
        except EdgeError as exc:
            notifier.status(f"failed: {exc}")
            log.error("edge serve: %s (exit %d)", exc, exc.exit_code)
            raise
        if stats is not None:
            log.info("%d frames, %d faces, %d decisions (%d granted), %.1f fps", stats.frames, stats.faces,
                     stats.decisions, stats.granted, stats.fps)
        sys.exit(0)

    return command


command = _cli()
