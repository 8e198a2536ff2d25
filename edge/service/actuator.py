"""``edge door``: the relay actuator, a small process that alone touches the lock's GPIO.

It listens on a unix socket (systemd socket activation, else it binds the
configured path), takes unlock requests only from the recognizer's uid
(``SO_PEERCRED``), energises the relay for ``door.pulse_seconds`` and fails
secure: the relay is driven off at start, at stop, after every pulse, on any
error, and during a lockout after the recognizer floods it.  ``edge door --off``
(the unit's ``ExecStopPost=``) drives it off once more after a crash or SIGKILL,
because a GPIO line keeps its last level when its owner dies.

An optional door contact reports ``door_opened`` / ``door_closed``, ``door_forced``
(opened with no recent unlock) and ``door_left_open``.

Everything runs in one thread around a ``selectors`` loop, so the relay state
has exactly one writer and the pulse end is a deadline, not a timer thread.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from ..config import DoorConfig
from ..errors import ConfigError, EdgeError
from .activation import PeerCred, bind_unix_listener, inherited_unix_listener, peer_cred, resolve_uid
from .events import Event, Journal
from .notify import Notifier, Watchdog, watchdog_interval
from .protocol import MAX_LINE, OPS, ProtocolError, decode, encode

log = logging.getLogger("edge.door")

# Connections are split by SO_PEERCRED at accept: anyone in the socket's group may ask for status, but
# only the recognizer unlocks, so strangers get a small table of their own and a short life in it.  A
# flood of idle connections from them then costs the recognizer nothing.
MAX_RECOGNIZER_CONNECTIONS = 16
MAX_STRANGER_CONNECTIONS = 4
RECOGNIZER_IDLE_SECONDS = 5.0
STRANGER_IDLE_SECONDS = 1.0
LISTEN_BACKLOG = socket.SOMAXCONN  # what systemd's Backlog= defaults to
ACCEPTS_PER_ROUND = 256  # bounded, so a connect storm cannot starve the pulse deadline either
TICK_SECONDS = 0.1
# The relay never stays on longer than this, whatever it is told: DoorConfig's upper bound for
# pulse_seconds, repeated here because the process that holds the lock must not trust its input.
MAX_PULSE_SECONDS = 30.0


class DoorError(EdgeError):
    """The relay or the door contact GPIO cannot be used."""

    exit_code = 69  # EX_UNAVAILABLE


def socket_path(config) -> Path:
    """``door.socket`` resolved like every other relative path: against the config file's folder."""
    path = Path(config.door.socket).expanduser()
    return path if path.is_absolute() else config.base_dir / path


# -- hardware ---------------------------------------------------------------
class Relay:
    """The lock relay through gpiozero (lgpio on a Pi 5, the mock factory in tests), off from the start."""

    def __init__(self, pin: int, active_high: bool = True) -> None:
        try:
            from gpiozero import OutputDevice  # apt: python3-gpiozero python3-lgpio
        except ImportError as exc:
            raise DoorError("gpiozero is not installed: apt install python3-gpiozero python3-lgpio "
                            "(venv with --system-site-packages) or pip install gpiozero") from exc
        try:
            self.device = OutputDevice(pin, active_high=active_high, initial_value=False)
        except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, GPIOPinInUse, PinInvalidPin...)
            raise DoorError(f"relay GPIO{pin} cannot be driven: {type(exc).__name__}: {exc}") from exc
        self.pin = pin

    @property
    def is_on(self) -> bool:
        return bool(self.device.value)

    def on(self) -> None:
        self.device.on()

    def off(self) -> None:
        self.device.off()

    def close(self) -> None:
        try:
            self.device.off()
        finally:
            self.device.close()


class Contact:
    """A door contact: ``closed`` is True when the switch is made (reed switch next to its magnet)."""

    def __init__(self, pin: int, pull_up: bool = True) -> None:
        from gpiozero import DigitalInputDevice

        try:
            self.device = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None)
        except Exception as exc:
            raise DoorError(f"door contact GPIO{pin} cannot be read: {type(exc).__name__}: {exc}") from exc

    @property
    def closed(self) -> bool:
        return bool(self.device.is_active)

    def close(self) -> None:
        self.device.close()


# -- the logic ----------------------------------------------------------------
@dataclass
class _Counters:
    unlocks: int = 0
    already_on: int = 0
    rate_limited: int = 0
    lockout_refused: int = 0
    forbidden: int = 0
    errors: int = 0
    lockouts: int = 0
    bad_pulse: int = 0
    connections_dropped: int = 0


# For each limit, the end of its configured range that keeps the door shut or raises the alarm sooner:
# what an unusable value (NaN, which fails every comparison, or one out of range) is replaced by.
_STRICT_END = {
    "max_unlocks_per_minute": "lo",
    "flood_requests": "lo",
    "flood_window_seconds": "hi",
    "lockout_seconds": "hi",
    "open_grace_seconds": "lo",
    "left_open_seconds": "lo",
}


@dataclass(frozen=True)
class DoorLimits:
    """The controller's numbers, each finite and inside DoorConfig's range; ``pulse_seconds`` None: never energise."""

    pulse_seconds: float | None
    max_unlocks_per_minute: int
    flood_requests: int
    flood_window_seconds: float
    lockout_seconds: float
    open_grace_seconds: float
    left_open_seconds: float

    @classmethod
    def of(cls, door) -> tuple[DoorLimits, list[str]]:
        """Limits from a door config that may not have been validated; also what had to be replaced."""
        meta = {f.name: f.metadata for f in dataclasses.fields(DoorConfig)}
        problems: list[str] = []
        values: dict = {}
        for name, end in _STRICT_END.items():
            lo, hi = meta[name]["lo"], meta[name]["hi"]
            raw = getattr(door, name, None)
            value = _number(raw)
            if value is None:
                value = lo if end == "lo" else hi
                problems.append(f"door.{name}={raw!r:.40} is not a number: using {value:g}")
            elif not lo <= value <= hi:
                clamped = min(max(value, lo), hi)
                problems.append(f"door.{name}={raw!r} is out of range [{lo:g}, {hi:g}]: using {clamped:g}")
                value = clamped
            values[name] = int(value) if isinstance(lo, int) else float(value)
        raw = getattr(door, "pulse_seconds", None)
        pulse = _number(raw)
        if pulse is None or not math.isfinite(pulse) or pulse <= 0:
            problems.append(f"door.pulse_seconds={raw!r:.40} is not a usable duration: unlocks refused")
            pulse = None
        elif pulse > MAX_PULSE_SECONDS:
            problems.append(f"door.pulse_seconds={raw!r} is longer than {MAX_PULSE_SECONDS:g} s: using that")
            pulse = MAX_PULSE_SECONDS
        return cls(pulse_seconds=pulse, **values), problems


def _number(value) -> float | None:
    """``value`` as a float, None if it is not a number or NaN (inf is kept: clamping handles it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


class DoorController:
    """Pulse, rate limit, flood lockout and door-contact supervision; the clock is injectable for tests."""

    def __init__(self, door, relay: Relay, contact: Contact | None = None,
                 emit: Callable[[Event], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
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


# -- the socket server --------------------------------------------------------
@dataclass
class _Connection:
    sock: socket.socket
    peer: PeerCred
    opened: float
    stranger: bool
    buffer: bytes = b""

    @property
    def deadline(self) -> float:
        return self.opened + (STRANGER_IDLE_SECONDS if self.stranger else RECOGNIZER_IDLE_SECONDS)


@dataclass
class ActuatorServer:
    listener: socket.socket
    controller: DoorController
    allowed_uid: int
    notifier: Notifier = field(default_factory=Notifier)
    watchdog: Watchdog | None = None
    stopping: bool = False

    def __post_init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.connections: dict[int, _Connection] = {}

    def serve(self) -> None:
        self.notifier.ready("relay off, listening")
        while not self.stopping:
            timeout = self.controller.tick()
            if self.watchdog is not None:
                self.watchdog.kick()
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._accept()
                elif self.connections.get(key.data.sock.fileno()) is key.data:  # not evicted this round
                    self._readable(key.data)
            self._expire_idle()

    def _accept(self) -> None:
        # Empty the backlog every round: the recognizer's connect may be queued behind a flood of others.
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and kin: keep serving those already connected
                log.warning("door socket: accept failed: %s", exc)
                return
            try:
                peer = peer_cred(sock)
            except OSError:
                sock.close()
                continue
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: PeerCred) -> None:
        stranger = peer.uid != self.allowed_uid
        limit = MAX_STRANGER_CONNECTIONS if stranger else MAX_RECOGNIZER_CONNECTIONS
        same = [c for c in self.connections.values() if c.stranger == stranger]
        if len(same) >= limit:
            # The oldest goes: the recognizer asks as soon as it connects, so an old connection is a
            # stale one, and a newcomer (an operator's --status) still gets its turn among strangers.
            self._close(min(same, key=lambda c: c.opened))
            self.controller.counters.connections_dropped += 1
        sock.setblocking(False)
        conn = _Connection(sock, peer, time.monotonic(), stranger)
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections.values()):
            if now >= conn.deadline:
                self._close(conn)

    def _readable(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        conn.buffer += chunk
        while b"\n" in conn.buffer:
            line, conn.buffer = conn.buffer.split(b"\n", 1)
            reply = self.handle(line, conn.peer)
            try:
                conn.sock.send(encode(reply))
            except OSError:
                self._close(conn)
                return
        if len(conn.buffer) > MAX_LINE:
            self._close(conn)

    def handle(self, line: bytes, peer: PeerCred) -> dict:
        try:
            request = decode(line)
            op = request.get("op")
            if op not in OPS:
                return {"ok": False, "error": "bad_request", "detail": f"op must be one of {', '.join(OPS)}"}
            if op == "status":
                return self.controller.status()
            if op == "events":
                after = request.get("after", 0)
                after = after if isinstance(after, int) and not isinstance(after, bool) else 0
                return {"ok": True, "events": self.controller.events_after(after), "seq": self.controller.seq}
            if peer.uid != self.allowed_uid:
                return self.controller.forbidden(peer, op)
            if op == "lock":
                return self.controller.lock()
            return self.controller.unlock(request)
        except ProtocolError as exc:
            return {"ok": False, "error": "bad_request", "detail": str(exc)}
        except Exception as exc:  # fail secure on anything unexpected, keep serving
            log.exception("request failed; relay off")
            self.controller.counters.errors += 1
            try:
                self.controller.fail_secure("error")
            except Exception:
                log.exception("relay off failed")
            return {"ok": False, "error": "internal", "detail": type(exc).__name__}

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        self.selector.close()


# -- wiring ---------------------------------------------------------------------
class _EventWriter:
    """Actuator events to the journal and, when ``door.events_log`` is set, a JSON-lines file."""

    def __init__(self, path: Path | None) -> None:
        self.journal = Journal("edge-door")
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")

    def __call__(self, event: Event, record: dict) -> None:
        self.journal.write(event)
        if self._file is not None:
            try:
                if self._file.tell() > 1 << 20:  # keep one 1 MiB generation
                    self._file.close()
                    os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
                    self._file = open(self.path, "a", buffering=1, encoding="utf-8")
                self._file.write(json.dumps({"ts": round(event.ts, 4), **record}) + "\n")
            except OSError as exc:
                log.warning("events log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _listener(config, allowed_uid: int) -> tuple[socket.socket, str]:
    inherited = inherited_unix_listener()
    if inherited is not None:
        return inherited, "socket activation"
    path = socket_path(config)
    if not config.door.socket:
        raise ConfigError("door.socket is empty: edge door needs a socket path")
    try:
        # Who may unlock is decided by SO_PEERCRED; the file mode decides who may connect at all, and
        # every connection costs the actuator a slot.  0660 like edge-door.socket: root and the socket's
        # group, which is made the recognizer's so that it can reach the socket without anyone else.
        sock = bind_unix_listener(path, mode=0o660, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise DoorError(f"cannot listen on {path}: {exc}") from exc
    _give_to_recognizer_group(path, allowed_uid)
    return sock, str(path)


def _give_to_recognizer_group(path: Path, allowed_uid: int) -> None:
    try:
        gid = pwd.getpwuid(allowed_uid).pw_gid
    except KeyError:
        log.warning("door socket %s: uid %d has no passwd entry; the socket stays in group %d, mode 0660",
                    path, allowed_uid, os.getegid())
        return
    if gid == os.stat(path).st_gid:
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        # Not fatal: root still reaches it, and the operator may have made the recognizer a member.
        log.warning("door socket %s: cannot give it to group %d (the recognizer's, uid %d): it stays in group "
                    "%d, mode 0660; run edge-door.socket, or add the recognizer to that group",
                    path, gid, allowed_uid, os.stat(path).st_gid)


def force_off(config) -> None:
    relay = Relay(config.door.relay_pin, config.door.active_high)
    relay.close()


def run_actuator(config) -> int:
    door = config.door
    try:
        allowed_uid = resolve_uid(door.recognizer_user)
    except KeyError as exc:
        raise ConfigError(f"door.recognizer_user: no such user {door.recognizer_user!r}") from exc
    writer = _EventWriter(Path(door.events_log) if door.events_log else None)
    relay = Relay(door.relay_pin, door.active_high)  # initial_value=False: off before anything else
    contact = None
    server = None
    bound: Path | None = None
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    try:
        contact = Contact(door.contact_pin, door.contact_pull_up) if door.contact_pin >= 0 else None
        controller = DoorController(door, relay, contact, writer)
        listener, where = _listener(config, allowed_uid)
        bound = None if where == "socket activation" else Path(where)
        notifier = Notifier()
        server = ActuatorServer(listener, controller, allowed_uid, notifier,
                                Watchdog(notifier, watchdog_interval()))

        def _stop(signum, _frame):
            server.stopping = True

        for sig in stop_signals:
            signal.signal(sig, _stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("edge door: relay GPIO%d (%s), pulse %.1f s, unlocks from uid %d, listening on %s",
                 door.relay_pin, "active high" if door.active_high else "active low", door.pulse_seconds,
                 allowed_uid, where)
        server.serve()
        notifier.stopping("relay off, stopping")
        return 0
    finally:
        # Fail secure on every way out: normal stop, EdgeError, a bug.
        try:
            relay.close()
        finally:
            writer(Event("relay", "relay off (stop)", detail={"on": False, "reason": "stop"}),
                   {"seq": -1, "mono": round(time.monotonic(), 4), "event_type": "relay", "on": False,
                    "reason": "stop"})
            writer.close()
            if contact is not None:
                contact.close()
            if server is not None:
                server.close()
                server.listener.close()
            if bound is not None:
                bound.unlink(missing_ok=True)


def _cli():
    from ..cli import boundary, config_option

    @click.command("door")
    @config_option
    @click.option("--off", "off_only", is_flag=True,
                  help="Drive the relay off and exit (the unit's ExecStopPost=, after a crash or SIGKILL).")
    @click.option("--status", "show_status", is_flag=True,
                  help="Ask the running actuator for its state (relay, door, counters) and print it as JSON.")
    @boundary
    def command(config_path, off_only, show_status):
        """Run the door actuator: the relay behind a unix socket that only the recognizer may use."""
        from ..cli import _load, _setup_logging
        from .lock_client import DoorClient, DoorUnavailable

        config = _load(config_path)
        _setup_logging(config.log_level)
        if show_status:
            try:
                click.echo(json.dumps(DoorClient(str(socket_path(config)), config.door.request_timeout).status()))
            except DoorUnavailable as exc:
                raise DoorError(str(exc)) from exc
            return
        if off_only:
            force_off(config)
            click.echo(f"relay GPIO{config.door.relay_pin} off")
            return
        try:
            code = run_actuator(config)
        except EdgeError:
            raise
        except Exception:
            log.exception("edge door: unexpected failure (relay driven off)")
            sys.exit(70)  # EX_SOFTWARE: Restart=on-failure brings it back, relay off at start
        sys.exit(code)

    return command


command = _cli()
