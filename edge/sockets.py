"""The one unix-socket layer: the door actuator's socket and the enrollment control socket both stand on it.

* :func:`bind_unix_listener` binds a stream socket with a live-owner probe: a socket file that someone
  still answers on is refused (:class:`~edge.errors.SocketInUseError`), a stale one is replaced, any
  other kind of file is never touched.  The :class:`UnixListener` it returns removes the file on close
  only while the file is still its own, so a successor's socket survives a predecessor's exit.
* :func:`peer_cred` is the kernel's word (``SO_PEERCRED``) on who is at the other end.
* :class:`LineBuffer` and :class:`LineChannel` are the framing: one JSON object per line, each line
  bounded by a size limit, each blocking read bounded by a deadline.
* :func:`connect_unix` is the client side: one deadline covers connecting, also through a full backlog.

Errors are :class:`~edge.errors.SocketError` and its kin; plain ``OSError`` from connect
(``FileNotFoundError``, ``ConnectionRefusedError``, ``PermissionError``) is left to the caller, who knows
what each means for its peer ("not running", "not in the group").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LineTooLongError, ProtocolError, SocketError, SocketInUseError, SocketTimeoutError

log = logging.getLogger(__name__)

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its terminating NUL
RECV_SIZE = 65536
PROBE_TIMEOUT = 0.5


# -- binding ----------------------------------------------------------------------------------
@dataclass
class UnixListener:
    """A listening stream socket and the file it was bound to; ``path`` None: inherited (systemd owns the file)."""

    sock: socket.socket
    path: Path | None = None
    inode: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Remove the socket file unless it is no longer the one bound here, then close the socket.

        In that order: while the socket is open its inode cannot be reused, so the comparison means
        something, and no successor can take the file for stale (its probe would still be answered).
        """
        try:
            if self.path is not None and self.inode is not None and os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            self.sock.close()


def _live_owner(path: Path, timeout: float) -> bool:
    """True if a process accepts (or queues) connections on the socket file at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(timeout)
    try:
        probe.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # nobody listens: left behind by a crashed run
    except (BlockingIOError, TimeoutError):
        return True  # a full backlog is a listener too, just a busy one
    except PermissionError as exc:
        # Without the right to connect there is no telling whether it is served: leave it be.
        raise SocketError(f"{path}: cannot tell whether another process serves it ({exc}); not replacing it") from exc
    finally:
        probe.close()


@contextlib.contextmanager
def _starters_lock(folder: Path):
    """Serialise probe, unlink and bind among starters in ``folder`` (flock on the folder itself).

    Without it two starters racing on one stale file could both find it stale, and the later one's
    unlink would orphan the earlier one's fresh socket: both would "serve", one of them unreachable.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield  # an unreadable folder: no lock to be had, the race stays as narrow as it is
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also drops the lock


def bind_unix_listener(path: str | Path, mode: int = 0o660, backlog: int = socket.SOMAXCONN, *,
                       group: int | None = None, probe_timeout: float = PROBE_TIMEOUT) -> UnixListener:
    """Bind and listen on ``path``; refuse a path another live process serves, replace a stale socket file.

    ``mode`` defaults to owner and group only: whoever can connect can hold the listener's connection
    slots, so "everyone" (0666) must be asked for explicitly.  ``group``: give the file to this gid before
    anyone can connect (``ConfigError`` if this process may not).
    """
    path = Path(path)
    if len(os.fsencode(str(path))) > MAX_UNIX_PATH:
        raise ConfigError(f"socket path {path} is longer than the {MAX_UNIX_PATH} bytes a unix socket allows")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot bind {path}: {exc}") from exc
    with _starters_lock(path.parent):
        _clear_stale(path, probe_timeout)
        return _bind(path, mode, backlog, group)


def _clear_stale(path: Path, probe_timeout: float) -> None:
    """Remove a socket file nobody serves; refuse a served one and anything that is not a socket."""
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketError(f"cannot bind {path}: {exc}") from exc
    if not stat.S_ISSOCK(existing.st_mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _live_owner(path, probe_timeout):
        raise SocketInUseError(f"another process already serves {path}; stop it first")
    log.info("replacing stale socket %s", path)
    path.unlink(missing_ok=True)


def _bind(path: Path, mode: int, backlog: int, group: int | None) -> UnixListener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)  # owner only until mode and group are right: never wider, not even briefly
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        listener = UnixListener(sock, path, os.lstat(path).st_ino)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # bound since the probe by a starter outside this layer
            raise SocketInUseError(f"another process already serves {path}; stop it first") from exc
        raise SocketError(f"cannot bind {path}: {exc}") from exc
    try:
        if group is not None and group != os.lstat(path).st_gid:
            try:
                os.chown(path, -1, group)
            except PermissionError as exc:
                raise ConfigError(f"cannot give {path} to group {group}: {exc}") from exc
        os.chmod(path, mode)
        # Connections are possible only from here on: listen() comes after the file is as it should be.
        sock.listen(backlog)
    except OSError as exc:
        listener.close()
        raise SocketError(f"cannot listen on {path}: {exc}") from exc
    except BaseException:
        listener.close()
        raise
    return listener


# -- peer credentials -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    """The kernel-verified pid/uid/gid of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return PeerCred(*struct.unpack("3i", raw))


def resolve_uid(user: str) -> int:
    """A user name or a numeric uid -> uid (what a peer's credentials are compared with); KeyError if unknown."""
    if user.isdigit():
        return int(user)
    import pwd

    return pwd.getpwnam(user).pw_uid


# -- framing -----------------------------------------------------------------------------------------
MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string literal, escapes included: its brackets do not nest
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
def encode_line(obj: dict) -> bytes:
    """One JSON object as one line."""
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


def _too_deep(line: bytes) -> bool:
    """More than :data:`MAX_DEPTH` nested arrays/objects outside strings (stops counting right there)."""
    depth = 0
    for byte in _STRING.sub(b"", line).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def decode_line(line: bytes) -> dict:
    """One line as a JSON object; :class:`~edge.errors.ProtocolError` for anything else."""
    # json's parser recurses in C, bounded only by the interpreter's recursion limit, which an imported
    # library may have raised out of reach (onnx2tf sets it to 2**31 - 1): [[[[... then crashes the
    # process instead of raising RecursionError.  No request nests that deep, so depth is refused first.
    if _too_deep(line):
        raise ProtocolError(f"not a JSON line: nested deeper than {MAX_DEPTH}")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON line: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a line must be a JSON object, not {type(obj).__name__}")
    return obj


class LineBuffer:
    """Bytes in, complete lines out; more than ``max_line`` bytes without a newline is refused, not kept."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._data = b""

    def append(self, chunk: bytes) -> None:
        self._data += chunk

    def next_line(self) -> bytes | None:
        """The next complete line without its newline, or None until one has arrived."""
        end = self._data.find(b"\n", 0, self.max_line + 1)
        if end < 0:
            if len(self._data) > self.max_line:
                raise LineTooLongError(f"a line longer than {self.max_line} bytes")
            return None
        line, self._data = self._data[:end], self._data[end + 1:]
        return line

    def take_rest(self) -> bytes:
        """What came after the last newline (an unterminated line at end of stream)."""
        rest, self._data = self._data, b""
        return rest


class LineChannel:
    """A connected stream socket speaking JSON lines: reads bounded in size and time.

    ``eof_ends_line``: a peer that half-closes after its last line without a newline (``nc -N``, ``socat``)
    is heard; without it such a fragment is dropped, as a reply cut short must be.
    """

    def __init__(self, sock: socket.socket, max_line: int, *, eof_ends_line: bool = False) -> None:
        self.sock = sock
        self.lines = LineBuffer(max_line)
        self.eof_ends_line = eof_ends_line

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: dict, timeout: float | None = None) -> None:
        """Send one line; ``timeout`` bounds the whole send (a peer that stopped reading)."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(encode_line(obj))
        except TimeoutError:
            raise SocketTimeoutError(f"the peer did not take a line within {timeout:g} s") from None

    def read_line(self, timeout: float | None = None, *, deadline: float | None = None) -> bytes | None:
        """The next line (without its newline), None at end of stream.

        ``timeout`` (or an absolute ``time.monotonic()`` ``deadline``) bounds the whole line, not each
        recv: a byte every few seconds must not hold a connection for hours.
        """
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            line = self.lines.next_line()
            if line is not None:
                return line
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise SocketTimeoutError(f"no complete line within {deadline - started:.2f} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                raise SocketTimeoutError(f"no complete line within {deadline - started:.2f} s") from None
            except ConnectionResetError:
                chunk = b""  # the peer closed with our data unread: the same end of stream
            if not chunk:
                rest = self.lines.take_rest()
                return rest if rest and self.eof_ends_line else None
            self.lines.append(chunk)

    def read(self, timeout: float | None = None, *, deadline: float | None = None) -> dict | None:
        """The next line as a JSON object, None at end of stream."""
        line = self.read_line(timeout, deadline=deadline)
        return None if line is None else decode_line(line)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "LineChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the client side ------------------------------------------------------------------------------------
def connect_unix(path: str | Path, timeout: float, max_line: int, *, deadline: float | None = None) -> LineChannel:
    """Connect to the stream socket at ``path`` within ``timeout`` seconds (or by ``deadline``).

    A socket with a timeout is non-blocking underneath, and a full listen backlog answers its connect
    with EAGAIN at once: another local user's connect storm must cost a request a short wait, not the
    request.  Each try takes a fresh socket.  Errors other than the deadline are the caller's to name.
    """
    deadline = time.monotonic() + timeout if deadline is None else deadline
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(str(path))
            return LineChannel(sock, max_line)
        except BlockingIOError:
            sock.close()
            if time.monotonic() + delay >= deadline:
                raise SocketTimeoutError(f"{path}: the listen backlog stayed full") from None
            time.sleep(delay)
            delay = min(2 * delay, 0.02)
        except TimeoutError:
            sock.close()
            raise SocketTimeoutError(f"{path}: no connection within the deadline") from None
        except BaseException:
            sock.close()
            raise
