"""Pulse, rate limit, flood lockout and door-contact supervision: the rules the relay obeys.

Everything runs in the server's one thread, so the relay state has exactly one writer and the pulse
end is a deadline checked by :meth:`DoorController.tick`, not a timer thread.  The clock is injectable
for tests.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

from ...sockets import PeerCred
from ..events import Event
from .hardware import Contact, Relay
from .limits import MAX_PULSE_SECONDS, DoorLimits

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1


@dataclass
class _Counters:
    """What ``status`` reports beside the relay and the door: how often each rule said no."""

    unlocks: int = 0
    already_on: int = 0
    rate_limited: int = 0
    lockout_refused: int = 0
    forbidden: int = 0
    errors: int = 0
    lockouts: int = 0
    bad_pulse: int = 0
    connections_dropped: int = 0


class DoorController:
    """Pulse, rate limit, flood lockout and door-contact supervision; the clock is injectable for tests."""

    def __init__(self, door, relay: Relay, contact: Contact | None = None,
                 emit: Callable[[Event, dict], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = door
        # Config validation refuses NaN and out-of-range values, but this is the process that holds the
        # lock: it checks again, and anything unusable becomes the strict end of its range.
        self.limits, problems = DoorLimits.of(door)
        for problem in problems:
            log.error("%s", problem)
        self.relay = relay
        self.contact = contact
        self.clock = clock
        self._emit_to = emit or (lambda event, record: None)
        self.counters = _Counters()
        self.pulse_until: float | None = None
        self.pulse_started: float | None = None
        self.last_pulse_end = float("-inf")
        self.lockout_until = float("-inf")
        self._pulses: collections.deque[float] = collections.deque()
        # Only the newest flood_requests + 1 matter (are they all inside the window?): bounded even
        # while a flood keeps coming during the lockout.
        self._requests: collections.deque[float] = collections.deque(maxlen=self.limits.flood_requests + 1)
        self._events: collections.deque[dict] = collections.deque(maxlen=256)
        self.seq = 0
        self.door_closed: bool | None = contact.closed if contact is not None else None
        self._open_since: float | None = None if self.door_closed in (True, None) else clock()
        self._left_open_reported = False
        self._last_forbidden_log = float("-inf")
        self.set_relay(False, "start")

    # events
    def emit(self, kind: str, message: str, **detail) -> None:
        event = Event(kind=kind, message=message, person=detail.pop("person", None), detail=detail)
        self.seq += 1
        record = {"seq": self.seq, "mono": round(self.clock(), 4), **event.as_dict()}
        self._events.append(record)
        self._emit_to(event, record)

    def events_after(self, after: int) -> list[dict]:
        return [e for e in self._events if e["seq"] > after]

    # relay
    def set_relay(self, on: bool, reason: str) -> None:
        """The only place the relay changes; off is attempted even if on() blew up."""
        try:
            if on:
                self.relay.on()
            else:
                self.relay.off()
        except Exception:
            if on:
                self._force_off("error")
            raise
        self.emit("relay", f"relay {'on' if on else 'off'} ({reason})", on=on, reason=reason)

    def _force_off(self, reason: str) -> None:
        try:
            self.relay.off()
        finally:
            self.pulse_until = None
            self.pulse_started = None
            self.emit("relay", f"relay off ({reason})", on=False, reason=reason)

    def fail_secure(self, reason: str) -> None:
        if self.pulse_until is not None:
            self.last_pulse_end = self.clock()
        self._force_off(reason)

    # requests
    def unlock(self, request: dict) -> dict:
        now = self.clock()
        limits = self.limits
        person = request.get("person") if isinstance(request.get("person"), str) else None
        self._requests.append(now)
        # Comparisons are written so that NaN (a broken clock) lands on the refusing side.
        while self._requests and not now - self._requests[0] <= limits.flood_window_seconds:
            self._requests.popleft()
        if not now >= self.lockout_until:
            self.counters.lockout_refused += 1
            return {"ok": False, "error": "lockout", "retry_after": round(self.lockout_until - now, 3)}
        if len(self._requests) > limits.flood_requests:
            self.counters.lockouts += 1
            self.lockout_until = now + limits.lockout_seconds
            self.fail_secure("flood")
            self.emit("door_lockout",
                      f"{len(self._requests)} unlock requests in {limits.flood_window_seconds:g} s: relay off, "
                      f"unlocks refused for {limits.lockout_seconds:g} s",
                      requests=len(self._requests), lockout_s=limits.lockout_seconds)
            self.counters.lockout_refused += 1
            return {"ok": False, "error": "lockout", "retry_after": round(limits.lockout_seconds, 3)}
        if self.pulse_until is not None:
            self.counters.already_on += 1
            return {"ok": True, "relay": True, "already_on": True, "remaining_s": round(self.pulse_until - now, 3)}
        if limits.pulse_seconds is None or not math.isfinite(now):
            self.counters.bad_pulse += 1
            return {"ok": False, "error": "bad_config", "detail": "door.pulse_seconds is not a usable duration"}
        while self._pulses and not now - self._pulses[0] <= 60.0:
            self._pulses.popleft()
        if len(self._pulses) >= limits.max_unlocks_per_minute:
            self.counters.rate_limited += 1
            return {"ok": False, "error": "rate_limited", "retry_after": round(60.0 - (now - self._pulses[0]), 3)}
        pulse = limits.pulse_seconds
        self._pulses.append(now)
        self.pulse_started = now
        self.pulse_until = now + pulse
        self.counters.unlocks += 1
        self.set_relay(True, "unlock")
        self.emit("unlock", f"unlocked for {pulse:g} s" + (f" ({person})" if person else ""),
                  person=person, pulse_s=pulse)
        return {"ok": True, "relay": True, "pulse_s": pulse}

    def lock(self) -> dict:
        if self.pulse_until is not None:
            self.last_pulse_end = self.clock()
            self.pulse_until = None
            self.pulse_started = None
            self.set_relay(False, "lock request")
        return {"ok": True, "relay": self.relay.is_on}

    def forbidden(self, peer: PeerCred, op: str) -> dict:
        self.counters.forbidden += 1
        now = self.clock()
        if now - self._last_forbidden_log > 10.0:  # a hostile local user must not fill the journal
            self._last_forbidden_log = now
            self.emit("unlock_refused", f"{op} request from uid {peer.uid} (pid {peer.pid}) refused: not the recognizer",
                      uid=peer.uid, pid=peer.pid, reason="forbidden")
        return {"ok": False, "error": "forbidden"}

    def status(self) -> dict:
        now = self.clock()
        door = "none" if self.door_closed is None else ("closed" if self.door_closed else "open")
        return {
            "ok": True, "relay": self.relay.is_on, "door": door, "pid": os.getpid(), "seq": self.seq,
            "pulse_remaining_s": round(max(0.0, self.pulse_until - now), 3) if self.pulse_until else 0.0,
            "lockout_remaining_s": round(max(0.0, self.lockout_until - now), 3),
            **self.counters.__dict__,
        }

    # time passing
    def tick(self) -> float:
        """Advance deadlines and read the contact; returns the seconds until the next deadline."""
        now = self.clock()
        if self.pulse_until is not None and self._pulse_over(now):
            self.pulse_until = None
            self.pulse_started = None
            self.last_pulse_end = now
            self.set_relay(False, "pulse end")
        if self.contact is not None:
            self._watch_contact(now)
        if self.pulse_until is not None:
            remaining = self.pulse_until - now
            return 0.0 if math.isnan(remaining) else max(0.0, min(TICK_SECONDS, remaining))
        return TICK_SECONDS

    def _pulse_over(self, now: float) -> bool:
        # Written so that NaN anywhere (clock, deadline) ends the pulse; the second test caps it from its
        # start, whatever pulse_until says.
        started = now if self.pulse_started is None else self.pulse_started
        return not now < self.pulse_until or not now - started < MAX_PULSE_SECONDS

    def _watch_contact(self, now: float) -> None:
        closed = self.contact.closed
        if closed != self.door_closed:
            self.door_closed = closed
            if closed:
                self._open_since = None
                self.emit("door_closed", "door closed")
            else:
                self._open_since = now
                self._left_open_reported = False
                expected = self.pulse_until is not None or now - self.last_pulse_end <= self.limits.open_grace_seconds
                if expected:
                    self.emit("door_opened", "door opened after an unlock")
                else:
                    self.emit("door_forced", "door opened without an unlock: forced open?")
        elif not closed and not self._left_open_reported and self._open_since is not None \
                and not now - self._open_since <= self.limits.left_open_seconds:
            self._left_open_reported = True
            self.emit("door_left_open", f"door open for more than {self.limits.left_open_seconds:g} s",
                      open_s=round(now - self._open_since, 1))
