"""Socket activation (``$LISTEN_FDS``, sd_listen_fds(3)) and peer credentials (``SO_PEERCRED``)."""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

SD_LISTEN_FDS_START = 3


def listen_fds(unset: bool = True, environ: dict | None = None) -> list[int]:
    """File descriptors systemd passed to this process (empty when not socket-activated)."""
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", "0"))
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if pid != os.getpid() or count <= 0:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def inherited_unix_listener() -> socket.socket | None:
    """The first passed fd if it is a listening AF_UNIX stream socket, else None."""
    for fd in listen_fds():
        sock = socket.socket(fileno=fd)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            return sock
        sock.detach()
    return None


def bind_unix_listener(path: str | Path, mode: int = 0o660, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """Bind a stream socket at ``path``, replacing a stale socket file (never another kind of file).

    ``mode`` defaults to owner and group only: whoever can connect can hold the listener's connection
    slots, so "everyone" (0666) must be asked for explicitly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


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
    """A user name or a numeric uid -> uid; KeyError if the name is unknown."""
    if user.isdigit():
        return int(user)
    import pwd

    return pwd.getpwnam(user).pw_uid
