"""Socket activation: the listening sockets systemd passes in (``$LISTEN_FDS``, sd_listen_fds(3)).

Binding a socket by hand, peer credentials and the line framing are :mod:`edge.sockets`.
"""

from __future__ import annotations

import os
import socket

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
