"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` per state change.

``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1`` and ``RELOADING=1``
are plain ``KEY=VALUE`` lines.  An ``@`` at the start of the socket path names
a Linux abstract-namespace socket.  Without ``$NOTIFY_SOCKET`` (run by hand, in
a shell) every call is a no-op, so the same code runs inside and outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Sends sd_notify messages; never raises (a lost notification must not stop the door)."""

    def __init__(self, path: str | None = None, environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        self.path = path if path is not None else env.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.path and (self.path.startswith("/") or self.path.startswith("@")):
            # Not edge.sockets: sd_notify is one unconnected datagram per message to a socket systemd owns,
            # with no listener to bind or probe, no peer to identify and no lines to frame.
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as exc:  # pragma: no cover - AF_UNIX always exists on Linux
                log.warning("sd_notify disabled: %s", exc)
        elif self.path:
            log.warning("sd_notify disabled: unsupported NOTIFY_SOCKET %r", self.path)
        self._address = _address(self.path) if self._sock else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, wait: float = 0.0, **fields) -> bool:
        """``send(READY=1, STATUS="...")`` -> one datagram ``READY=1\\nSTATUS=...``.

        A full receive queue (a busy or hung manager) drops the message instead of
        blocking the frame loop; state changes (READY, STOPPING, RELOADING) wait up
        to ``wait`` seconds for room first.
        """
        if self._sock is None:
            return False
        text = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            self._sock.settimeout(wait if wait > 0 else 0.0)
            self._sock.sendto(text.encode(), self._address)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", text.split("\n")[0], exc)
            return False

    def ready(self, status: str = "") -> bool:
        if status:
            return self.send(wait=1.0, READY=1, STATUS=status, MAINPID=os.getpid())
        return self.send(wait=1.0, READY=1, MAINPID=os.getpid())

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(wait=1.0, STOPPING=1, STATUS=status)

    def reloading(self) -> bool:
        # Type=notify-reload (systemd 253) wants MONOTONIC_USEC beside RELOADING=1.
        return self.send(wait=1.0, RELOADING=1, MONOTONIC_USEC=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: dict | None = None) -> float | None:
    """Seconds between watchdog deadlines systemd enforces (``$WATCHDOG_USEC``), or None when off.

    ``$WATCHDOG_PID``, when set, must be this process: a child must not ping for its parent.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """``WATCHDOG=1`` at most every half interval, and only when :meth:`kick` is called.

    The caller kicks from the place whose progress proves health (the frame
    loop after a frame was processed); if that place stops running, the pings
    stop and systemd restarts the unit after ``WatchdogSec``.
    """

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        self.notifier = notifier
        self.period = interval / 2 if interval else None
        self._last = 0.0
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.period is not None and self.notifier.enabled

    def kick(self, now: float | None = None) -> bool:
        if not self.enabled:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last < self.period:
            return False
        self._last = now
        self.pings += 1
        return self.notifier.send(WATCHDOG=1)
