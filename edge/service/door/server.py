"""The actuator's socket server: one ``selectors`` loop, connections split by SO_PEERCRED at accept.

Framing and peer credentials come from :mod:`edge.sockets`, the requests from :mod:`edge.service.protocol`.
The loop also drives the controller's deadlines and the watchdog, so a wedged loop is a restart.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from dataclasses import dataclass, field

from ...errors import LineTooLongError, ProtocolError
from ...sockets import LineBuffer, PeerCred, decode_line, encode_line, peer_cred
from ..notify import Notifier, Watchdog
from ..protocol import MAX_LINE, OPS
from .controller import DoorController

log = logging.getLogger(__name__)

# Connections are split by SO_PEERCRED at accept: anyone in the socket's group may ask for status, but
# only the recognizer unlocks, so strangers get a small table of their own and a short life in it.  A
# flood of idle connections from them then costs the recognizer nothing.
MAX_RECOGNIZER_CONNECTIONS = 16
MAX_STRANGER_CONNECTIONS = 4
RECOGNIZER_IDLE_SECONDS = 5.0
STRANGER_IDLE_SECONDS = 1.0
LISTEN_BACKLOG = socket.SOMAXCONN  # what systemd's Backlog= defaults to
ACCEPTS_PER_ROUND = 256  # bounded, so a connect storm cannot starve the pulse deadline either


@dataclass
class _Connection:
    """One accepted connection: who it is, when it opened (its life is short), what it sent so far."""

    sock: socket.socket
    peer: PeerCred
    opened: float
    stranger: bool
    lines: LineBuffer = field(default_factory=lambda: LineBuffer(MAX_LINE))

    @property
    def deadline(self) -> float:
        return self.opened + (STRANGER_IDLE_SECONDS if self.stranger else RECOGNIZER_IDLE_SECONDS)


@dataclass
class ActuatorServer:
    """Serves ``listener`` (bound, or passed by systemd) until ``stopping``; unlocks only for ``allowed_uid``."""

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
        conn.lines.append(chunk)
        try:
            while (line := conn.lines.next_line()) is not None:
                reply = self.handle(line, conn.peer)
                conn.sock.send(encode_line(reply))
        except (OSError, LineTooLongError):  # an over-long line is closed on, not answered: see protocol
            self._close(conn)

    def handle(self, line: bytes, peer: PeerCred) -> dict:
        try:
            request = decode_line(line)
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
