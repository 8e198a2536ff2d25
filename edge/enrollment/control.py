"""The enrollment control socket: the running recognizer takes enrollment requests from ``edge enroll``.

Security: a unix stream socket, mode 0660, group ``enrollment.socket_group``
(default: the service's own group); on top of the file mode every connection's
``SO_PEERCRED`` is checked: root, the service's own uid, or a member of that
group (primary or supplementary, read from ``/proc/<pid>/status``).  Anyone
else gets an error line and the connection is closed.

Protocol (one JSON object per line, both ways):

* request ``{"op": "ping"}`` -> ``{"event": "pong", "model": ..., "threshold": ...}``
* request ``{"op": "enroll", "name": ..., "samples": N, "timeout": s, "keep_crops": bool,
  "crops": bool, "allow_lookalike": bool}`` -> ``started``, then ``rejected`` / ``accepted`` /
  ``warning`` / ``info`` events as frames come, then ``done`` or ``error``.
* The client closing its end (Ctrl-C, kill) cancels the session; nothing is saved.

A malformed request (not JSON, not an object, wrong field types) is answered
``{"event": "error", "code": "bad_request", ...}``; one request per connection.

Threads: the frame loop calls :meth:`ControlServer.on_frame` (quality gates
and one extra embedding per good frame, only while a session is active); the
listener thread accepts, checks the peer and answers refusals itself; one
thread per admitted connection, at most :data:`MAX_CONNECTIONS` (more are
answered ``"code": "busy"``), talks to the client and writes to the gallery
through its own SQLite connection.  A connection has :data:`REQUEST_TIMEOUT`
seconds to send its request line.  The recognizer's Matcher picks the new
samples up through the gallery's data_version.
"""

from __future__ import annotations

import grp
import logging
import math
import os
import pwd
import queue
import select
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError, EdgeError, ProtocolError, SocketTimeoutError
from ..sockets import LineChannel, UnixListener, bind_unix_listener, connect_unix, decode_line, peer_cred
from .errors import ControlPermissionError, EnrollmentError, ServiceNotRunning

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # a request
MAX_EVENT_LINE = 1 << 20  # an event to the client: an accepted sample may carry its crop as a base64 PNG
SOCKET_NAME = "control.sock"
# The door's frame loop shares the process: connections must not grow its thread count without bound
# (305 threads were seen from one flood), nor hold a thread by never finishing their request.
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0  # a client that stops reading mid-session is dropped after this long
REFUSAL_LOG_INTERVAL = 10.0
MAX_SESSION_TIMEOUT = 3600.0  # enrollment.timeout's upper bound


class BadRequest(EnrollmentError):
    """A control request that is not a JSON object of the expected shape."""

    exit_code = 76  # EX_PROTOCOL
    code = "bad_request"


def socket_path(config) -> Path:
    value = config.enrollment.socket_path
    if not value:
        return config.resolved_state_dir() / SOCKET_NAME
    path = Path(value).expanduser()
    return path if path.is_absolute() else config.base_dir / path


def resolve_group(name: str) -> int:
    if not name:
        return os.getegid()
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"enrollment.socket_group: no group named {name!r} on this system") from None


def _process_groups(pid: int) -> set[int] | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except OSError:
        return None
    return None


def _try_send(channel: LineChannel, obj: dict) -> None:
    """A last word to a client that may have stopped reading: briefly, and never an exception."""
    try:
        channel.send(obj, timeout=0.5)
    except (OSError, SocketTimeoutError):
        pass


def _read_request(channel: LineChannel, timeout: float) -> dict:
    """The one request line; ``timeout`` bounds the whole line (:class:`~edge.errors.SocketTimeoutError`).

    A half-closed connection with nothing sent reads as ``{}`` and is answered like any request without
    an ``op``.  Framing faults (too long, not JSON, not an object) are this protocol's ``bad_request``.
    """
    try:
        line = channel.read_line(timeout)
        return decode_line(line or b"{}")
    except ProtocolError as exc:
        raise BadRequest(str(exc)) from exc


def _enroll_options(request: dict, enrollment) -> tuple[str, int, float]:
    """name, samples and timeout of an enroll request, checked: they come from another process."""
    name = request.get("name", "")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    samples = request.get("samples") or enrollment.samples
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise BadRequest("samples must be an integer")
    if not 1 <= samples <= 50:
        raise EnrollmentError(f"samples must be 1..50, not {samples}")
    timeout = request.get("timeout") or enrollment.timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
    return name, samples, min(float(timeout), MAX_SESSION_TIMEOUT)


class _Throttle:
    """At most one log line per ``interval`` for something a stranger can repeat at will."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        """None: stay quiet this time; else how many were held back since the last line."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval:
                self.suppressed += 1
                return None
            self._last = now
            held, self.suppressed = self.suppressed, 0
            return held


class _Active:
    def __init__(self, session, uid: int) -> None:
        self.session = session
        self.uid = uid
        self.events: queue.Queue = queue.Queue()


class ControlServer:
    """Serves enrollment requests from inside the running recognizer.

    ``embedder`` must be the recognizer's own (it is only used on the frame
    loop thread, from :meth:`on_frame`); ``threshold`` is a callable so a
    config reload (SIGHUP) is seen by the next session.
    """

    def __init__(self, config, embedder, threshold: Callable[[], float], *, path: Path | None = None,
                 mode: int = 0o660, group: str | None = None, companions=(), max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.config = config
        self.embedder = embedder
        # Own interpreters for the two-stage model: the frame loop uses the recognizer's at the same time.
        self.companions = list(companions)
        self.threshold = threshold
        self.path = Path(path) if path is not None else socket_path(config)
        self.mode = mode
        self.gid = resolve_group(config.enrollment.socket_group if group is None else group)
        self.gallery_path = config.gallery_path()
        self._listener: UnixListener | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self.frames = 0
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refusal_log = _Throttle(REFUSAL_LOG_INTERVAL)

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> "ControlServer":
        # A path another recognizer still serves is refused (SocketInUseError), a stale one replaced.
        self._listener = bind_unix_listener(self.path, mode=self.mode, backlog=128, group=self.gid)
        self._listener.sock.settimeout(0.5)  # the accept loop looks at _halt this often
        self._thread = threading.Thread(target=self._serve, name="edge-enroll-control", daemon=True)
        self._thread.start()
        log.info("enrollment control socket at %s (mode %o, group %d)", self.path, self.mode, self.gid)
        return self

    def stop(self) -> None:
        self._halt.set()
        active = self._active
        if active is not None:
            active.session.cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()  # removes the file only while it is still the one bound here

    # -- frame loop side ----------------------------------------------------------------
    def on_frame(self, result, stats=None) -> None:
        """Frame observer ``(FrameResult, RunStats)``; costs nothing while no one enrolls."""
        self.frames += 1
        active = self._active
        if active is None:
            return
        try:
            for event in active.session.offer(result.frame.main, result.faces, result.frame.timestamp,
                                              crops=result.crops, embeddings=result.embeddings,
                                              refused=result.refused):
                active.events.put(event)
        except Exception as exc:  # a broken session must not take the door down
            log.exception("enrollment session failed")
            active.session.cancelled.set()
            active.events.put({"event": "error", "message": f"internal error in the recognizer: {exc}"})

    # -- connections -----------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self._listener.sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if not self._halt.is_set():
                    log.error("control socket stopped accepting: %s", exc)
                break
            try:
                self._admit(conn)
            except Exception:  # one bad connection must not stop the listener
                log.exception("control socket: admitting a connection failed")
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        """Refusals are answered here, on the listener thread: only admitted connections get a thread."""
        try:
            peer = peer_cred(conn)
        except OSError:
            conn.close()
            return
        pid, uid, gid = peer.pid, peer.uid, peer.gid
        if not self.allowed(pid, uid, gid):
            held = self._refusal_log()
            if held is not None:
                log.warning("control socket: refused uid %d (pid %d): not root, not us, not in group %d%s",
                            uid, pid, self.gid, f" ({held} more refused since the last warning)" if held else "")
            self._refuse(conn, {"event": "error", "code": "permission",
                                "message": f"uid {uid} may not enroll: not in group {self.gid}"})
            return
        if not self._slots.acquire(blocking=False):
            self._refuse(conn, {"event": "error", "code": "busy", "message":
                                f"the recognizer is serving {self.max_connections} control connections; try again"})
            return
        try:
            threading.Thread(target=self._handle, args=(conn, uid), name="edge-enroll-conn", daemon=True).start()
        except BaseException:
            self._slots.release()
            raise

    @staticmethod
    def _refuse(conn: socket.socket, reply: dict) -> None:
        with conn:
            _try_send(LineChannel(conn, MAX_LINE), reply)
            try:
                # Read what the client already sent: closing on unread data resets the connection, and
                # a client that reads late would see the reset instead of the reason.
                conn.setblocking(False)
                for _ in range(4):
                    if not conn.recv(MAX_LINE):
                        break
            except OSError:
                pass

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid == 0 or uid == os.geteuid() or gid == self.gid:
            return True
        groups = _process_groups(pid)
        if groups is None:
            try:
                user = pwd.getpwuid(uid).pw_name
                groups = set(os.getgrouplist(user, gid))
            except KeyError:
                groups = set()
        return self.gid in groups

    def _handle(self, conn: socket.socket, uid: int) -> None:
        try:
            with LineChannel(conn, MAX_LINE, eof_ends_line=True) as channel:
                self._converse(channel, uid)
        finally:
            self._slots.release()

    def _converse(self, channel: LineChannel, uid: int) -> None:
        try:
            try:
                request = _read_request(channel, self.request_timeout)
            except SocketTimeoutError as exc:
                log.info("control connection from uid %d timed out: %s", uid, exc)
                _try_send(channel, {"event": "error", "code": "timeout",
                                    "message": f"no complete request within {self.request_timeout:g} s"})
                return
            op = request.get("op")
            if op == "ping":
                channel.send({"event": "pong", "model": self.embedder.model_id, "threshold": self.threshold(),
                              "frames": self.frames, "busy": self._active is not None}, SEND_TIMEOUT)
            elif op == "enroll":
                self._enroll(channel, request, uid)
            else:
                raise BadRequest(f"unknown request {str(op)[:40]!r}: ping or enroll")
        except SocketTimeoutError as exc:  # a client that stopped reading
            log.info("control connection from uid %d dropped: %s", uid, exc)
        except EdgeError as exc:
            reply = {"event": "error", "message": str(exc), "exit_code": exc.exit_code}
            if getattr(exc, "code", None):
                reply["code"] = exc.code
            _try_send(channel, reply)
        except OSError as exc:
            log.info("control connection ended: %s", exc)
        except Exception as exc:  # a bug: the client hears of it and the server keeps serving
            log.exception("control request failed")
            _try_send(channel, {"event": "error", "code": "internal",
                                "message": f"internal error: {type(exc).__name__}"})

    def _enroll(self, channel: LineChannel, request: dict, uid: int) -> None:
        from ..gallery import Gallery
        from .live import commit, done_event, start_session, summary_line

        name, wanted, timeout = _enroll_options(request, self.config.enrollment)
        with Gallery(self.gallery_path) as gallery:
            session = start_session(gallery, name, wanted, self.config, self.embedder, self.threshold(),
                                    allow_lookalike=bool(request.get("allow_lookalike")),
                                    want_crops=bool(request.get("crops")))
            active = _Active(session, uid)
            with self._lock:
                if self._active is not None:
                    raise EnrollmentError(f"busy: {self._active.session.name} is being enrolled right now")
                self._active = active
            log.info("enrollment of %s started by uid %d (%d samples)", session.name, uid, wanted)
            try:
                channel.send({"event": "started", "name": session.name, "samples": wanted,
                              "model": self.embedder.model_id, "threshold": self.threshold(),
                              "where": "recognizer"}, SEND_TIMEOUT)
                outcome = self._pump(channel, active, timeout)
                if outcome == "done":
                    self._active = None
                    if self._client_gone(channel):
                        log.info("enrollment of %s: client left before the save; nothing saved", session.name)
                        return
                    keep = bool(request.get("keep_crops"))
                    person_id = commit(gallery, session, self.embedder.model_id,
                                       self.config.gallery.embedding_dtype, keep, via=f"live:uid{uid}",
                                       companions=self.companions)
                    total = next((p.samples for p in gallery.people() if p.id == person_id), wanted)
                    log.info("enrolled %s: %d samples (%s)", session.name, wanted, summary_line(session))
                    channel.send(done_event(session, self.embedder.model_id, total), SEND_TIMEOUT)
                elif outcome == "timeout":
                    channel.send({"event": "error", "message":
                                  f"timed out after {timeout:.0f} s with {len(session.samples)}/{wanted} good "
                                  f"samples; nothing was saved ({summary_line(session)})"}, SEND_TIMEOUT)
                else:
                    log.info("enrollment of %s cancelled (%s); nothing saved", session.name, outcome)
            finally:
                session.cancelled.set()
                with self._lock:
                    if self._active is active:
                        self._active = None

    @staticmethod
    def _client_gone(channel: LineChannel) -> bool:
        try:
            poller = select.poll()  # not select.select: that fails on a descriptor past 1023
            poller.register(channel, select.POLLIN)
            if not poller.poll(0):
                return False
            data = channel.sock.recv(4096, socket.MSG_PEEK)
            return not data or b"cancel" in data
        except OSError:
            return True

    def _pump(self, channel: LineChannel, active: _Active, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        idle_told = 0.0
        while True:
            if self._halt.is_set():
                channel.send({"event": "error", "message": "the recognizer is stopping; nothing was saved"},
                             SEND_TIMEOUT)
                return "stopping"
            if self._client_gone(channel):
                return "client gone"
            try:
                event = active.events.get(timeout=0.2)
            except queue.Empty:
                event = None
            if event is not None:
                channel.send(event, SEND_TIMEOUT)
                if event["event"] == "error":
                    return "error"
            session = active.session
            if session.done and active.events.empty():
                return "done"
            now = time.monotonic()
            if now > deadline:
                return "timeout"
            last = session.last_frame_at
            stale = now - (last if last is not None else started)
            if stale > 5.0 and now - idle_told > 5.0:
                idle_told = now
                channel.send({"event": "info", "message": f"no frames from the camera for {stale:.0f} s"},
                             SEND_TIMEOUT)


# -- wiring ---------------------------------------------------------------------------------
class _ServiceComponent:
    """The control server as a service component: a socket that cannot be opened is logged, not fatal.

    Enrollment is an operator convenience; the door keeps working without it.
    """

    def __init__(self, service) -> None:
        self.service = service
        self.server: ControlServer | None = None

    def start(self) -> None:
        recognizer = self.service.recognizer
        try:
            from ..app import build_companions

            server = ControlServer(self.service.config, recognizer.embedder, lambda: recognizer.threshold,
                                   companions=build_companions(self.service.config, recognizer.embedder.model_id)).start()
        except (EdgeError, OSError) as exc:
            log.error("enrollment control socket unavailable, live enrollment disabled: %s", exc)
            return
        self.server = server
        self.service.frame_observers.append(server.on_frame)

    def reload(self, config) -> None:
        """A config reload: the next session uses the new [enrollment] gates (the socket itself needs a restart)."""
        if self.server is not None:
            self.server.config = config

    def stop(self) -> None:
        if self.server is not None:
            if self.server.on_frame in self.service.frame_observers:
                self.service.frame_observers.remove(self.server.on_frame)
            self.server.stop()


def service_component(service) -> _ServiceComponent:
    """Factory for :data:`edge.service.recognizer_service.COMPONENTS`."""
    return _ServiceComponent(service)


def attach_control_server(recognizer, config, **kwargs) -> ControlServer:
    """Start a control server for a plain :class:`edge.app.Recognizer`; pass ``server.on_frame`` to ``run``."""
    from ..app import build_companions

    kwargs.setdefault("companions", build_companions(config, recognizer.embedder.model_id))
    return ControlServer(config, recognizer.embedder, lambda: recognizer.threshold, **kwargs).start()


# -- client -------------------------------------------------------------------------------------
class ControlClient:
    """``edge enroll``'s side: ``timeout`` bounds the connect and each wait for the server's next event."""

    def __init__(self, path: str | Path, timeout: float = 15.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.channel: LineChannel | None = None

    def connect(self) -> "ControlClient":
        try:
            self.channel = connect_unix(self.path, self.timeout, MAX_EVENT_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServiceNotRunning(f"no recognizer is listening on {self.path}") from exc
        except PermissionError as exc:
            try:
                group = grp.getgrgid(os.stat(self.path).st_gid).gr_name
            except (KeyError, OSError):
                group = "the socket's group"
            raise ControlPermissionError(
                f"permission denied on {self.path}: enrolling needs membership in group {group!r} (or root)"
            ) from exc
        except SocketTimeoutError as exc:
            raise EnrollmentError(f"the recognizer did not take the connection on {self.path} "
                                  f"within {self.timeout:g} s") from exc
        return self

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def __enter__(self) -> "ControlClient":
        return self.connect() if self.channel is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, obj: dict, idle_timeout: float | None = None) -> Iterator[dict]:
        """Send one request; yield the server's events until it closes the connection.

        ``idle_timeout`` (default ``timeout``) bounds the wait for each event line.
        """
        assert self.channel is not None
        try:
            self.channel.send(obj, self.timeout)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: its reason is still waiting to be read
        while True:
            try:
                line = self.channel.read_line(idle_timeout or self.timeout)
            except SocketTimeoutError as exc:
                raise EnrollmentError(f"the recognizer stopped answering on {self.path}") from exc
            if line is None:
                break
            if not line.strip():
                continue
            event = decode_line(line)
            if event.get("event") == "error" and event.get("code") == "permission":
                raise ControlPermissionError(event.get("message", "permission denied"))
            yield event
