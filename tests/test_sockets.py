"""edge/sockets.py, the layer under the door socket and the enrollment control socket: the live-owner
probe, peer credentials, the framing's size limits and the deadlines on both sides."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from edge.errors import (DoorUnavailable, LineTooLongError, ProtocolError, SocketError, SocketInUseError,
                         SocketTimeoutError)
from edge.sockets import (LineBuffer, LineChannel, bind_unix_listener, connect_unix, decode_line, encode_line,
                          peer_cred)

from .service_helpers import fill_backlog, world_dir


@pytest.fixture
def folder():
    path = world_dir()  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve_once(listener, reply: bytes | None) -> threading.Thread:
    """Answer the first connection that sends a line with ``reply`` (None: never answer).

    Connections that end without a line (a bind's probe still in the backlog) are skipped.
    """
    def run():
        while True:
            conn, _ = listener.sock.accept()
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while b"\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if b"\n" not in data:
                        continue
                    if reply is not None:
                        conn.sendall(reply)
                    else:
                        conn.recv(1)  # hold the connection until the client gives up
                except OSError:
                    pass  # the client gave up first: what some of these tests want
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- the live-owner probe ----------------------------------------------------------------------------
def test_a_live_socket_is_refused_and_keeps_serving(folder):
    path = folder / "x.sock"
    first = bind_unix_listener(path)
    try:
        inode = os.lstat(path).st_ino
        with pytest.raises(SocketInUseError, match="already serves"):
            bind_unix_listener(path)
        assert os.lstat(path).st_ino == inode  # not unlinked, not rebound
        server = _serve_once(first, b'{"ok":true}\n')
        with connect_unix(path, 2.0, 4096) as channel:
            channel.send({"op": "status"}, 2.0)
            assert channel.read(2.0) == {"ok": True}
        server.join(5)
    finally:
        first.close()
    assert not path.exists()


def test_a_listener_with_a_full_backlog_counts_as_live(folder):
    path = folder / "x.sock"
    first = bind_unix_listener(path, backlog=0)
    filler = fill_backlog(path)
    try:
        with pytest.raises(SocketInUseError):
            bind_unix_listener(path, probe_timeout=0.2)
    finally:
        for s in filler:
            s.close()
        first.close()


def test_a_stale_socket_file_is_replaced(folder):
    path = folder / "x.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))
    crashed.close()  # the file stays, nobody listens: what a SIGKILL leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    listener = bind_unix_listener(path)
    try:
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        listener.close()


def test_starters_racing_on_a_stale_file_leave_exactly_one_server(folder):
    path = folder / "x.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))
    crashed.close()
    barrier = threading.Barrier(8)
    results = []

    def start():
        barrier.wait()
        try:
            results.append(bind_unix_listener(path))
        except SocketInUseError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    winners = [r for r in results if not isinstance(r, Exception)]
    try:
        assert len(results) == 8 and len(winners) == 1, results
        with connect_unix(path, 1.0, 4096):  # and the one that won is the one the path reaches
            conn, _ = winners[0].sock.accept()
            conn.close()
    finally:
        for listener in winners:
            listener.close()


def test_a_file_that_is_not_a_socket_is_never_replaced(folder):
    path = folder / "x.sock"
    path.write_text("precious")
    with pytest.raises(SocketError, match="not a socket"):
        bind_unix_listener(path)
    assert path.read_text() == "precious"


def test_closing_leaves_a_successors_socket_alone(folder):
    path = folder / "x.sock"
    old = bind_unix_listener(path)
    os.unlink(path)  # an operator cleaned up; a successor binds the path
    new = bind_unix_listener(path)
    try:
        old.close()
        assert path.exists()  # the predecessor's exit did not take the successor's file
        with connect_unix(path, 1.0, 4096):
            pass
    finally:
        new.close()
    assert not path.exists()


def test_an_over_long_path_is_a_config_error():
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="107 bytes"):
        bind_unix_listener(Path("/tmp") / ("x" * 120))


# -- peer credentials ---------------------------------------------------------------------------------
def test_peer_credentials_are_the_kernels(folder):
    path = folder / "x.sock"
    listener = bind_unix_listener(path)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only connects and waits
        try:
            os.close(read_fd)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                os.write(write_fd, b"C")
                s.recv(1)
        finally:
            os._exit(0)
    try:
        os.close(write_fd)
        assert os.read(read_fd, 1) == b"C"
        conn, _ = listener.sock.accept()
        with conn:
            peer = peer_cred(conn)
        assert (peer.pid, peer.uid, peer.gid) == (pid, os.getuid(), os.getgid())
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
        listener.close()


# -- framing --------------------------------------------------------------------------------------------
def test_lines_up_to_the_limit_pass_and_longer_ones_are_refused():
    buffer = LineBuffer(8)
    buffer.append(b'12345678\n{"a":1}\n123')
    assert buffer.next_line() == b"12345678"
    assert decode_line(buffer.next_line()) == {"a": 1}
    assert buffer.next_line() is None  # "123" waits for the rest of its line
    buffer.append(b"456789")  # 9 bytes and still no newline: refused now, not buffered on
    with pytest.raises(LineTooLongError):
        buffer.next_line()
    complete = LineBuffer(8)
    complete.append(b"123456789\n")  # a complete line is held to the limit too
    with pytest.raises(LineTooLongError):
        complete.next_line()


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100_000, b""])
def test_anything_but_a_json_object_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        decode_line(line)


def test_deep_nesting_is_refused_whatever_the_recursion_limit():
    """onnx2tf raises the recursion limit to 2**31 - 1 at import; json's C parser then overflowed the stack
    on [[[[... and took the whole process down (seen in the full test run)."""
    import subprocess
    import sys

    code = ("import sys; sys.setrecursionlimit(2**31 - 1)\n"
            "from edge.errors import ProtocolError\nfrom edge.sockets import decode_line\n"
            "try:\n    decode_line(b'[' * 200_000)\nexcept ProtocolError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "nested deeper than" in result.stdout, (result.returncode, result.stderr)
    assert decode_line(b'{"name": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}') == {
        "name": '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["[[[{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'}  # brackets in strings do not nest


def test_encode_then_decode_is_one_line():
    line = encode_line({"op": "unlock", "person": "Ada\nLovelace"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line[:-1]) == {"op": "unlock", "person": "Ada\nLovelace"}


def test_the_read_deadline_covers_the_whole_line():
    a, b = socket.socketpair()
    with a, b:
        channel = LineChannel(a, 4096)
        stop = threading.Event()

        def dribble():  # a byte every 50 ms: each recv is quick, the line never ends
            while not stop.is_set():
                try:
                    b.send(b"x")
                except OSError:
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(SocketTimeoutError):
                channel.read_line(0.5)
        finally:
            stop.set()
            thread.join(5)
        assert 0.4 <= time.monotonic() - started < 2.0


def test_an_unterminated_line_at_the_end_of_the_stream():
    for eof_ends_line, expected in ((False, None), (True, b'{"op":"ping"}')):
        a, b = socket.socketpair()
        with a, b:
            b.sendall(b'{"op":"ping"}')
            b.shutdown(socket.SHUT_WR)
            assert LineChannel(a, 4096, eof_ends_line=eof_ends_line).read_line(2.0) == expected


# -- the client's deadlines -------------------------------------------------------------------------------
def test_a_server_that_never_answers_costs_the_client_its_timeout(folder):
    path = folder / "x.sock"
    listener = bind_unix_listener(path)
    try:
        server = _serve_once(listener, None)
        started = time.monotonic()
        with connect_unix(path, 0.3, 4096) as channel:
            channel.send({"op": "status"}, 0.3)
            with pytest.raises(SocketTimeoutError):
                channel.read_line(0.3)
        assert time.monotonic() - started < 2.0
        server.join(5)
    finally:
        listener.close()


def test_the_door_client_gives_up_on_a_silent_actuator(folder):
    from edge.service.lock_client import DoorClient

    path = folder / "door.sock"
    listener = bind_unix_listener(path)  # listening, never accepting: the kernel queues the connect
    try:
        started = time.monotonic()
        with pytest.raises(DoorUnavailable, match="did not answer within 0.30 s"):
            DoorClient(str(path), timeout=0.3).status()
        assert 0.25 <= time.monotonic() - started < 2.0
        server = _serve_once(listener, None)  # accepting, reading, never answering
        with pytest.raises(DoorUnavailable, match="did not answer within"):
            DoorClient(str(path), timeout=0.3).status()
        server.join(5)
    finally:
        listener.close()


def test_the_control_client_gives_up_on_a_silent_recognizer(folder):
    from edge.enrollment.control import ControlClient
    from edge.enrollment.errors import EnrollmentError

    path = folder / "control.sock"
    listener = bind_unix_listener(path)
    try:
        server = _serve_once(listener, None)
        started = time.monotonic()
        with ControlClient(path, timeout=0.3) as client:
            with pytest.raises(EnrollmentError, match="stopped answering"):
                next(client.request({"op": "ping"}))
        assert time.monotonic() - started < 2.0
        server.join(5)
    finally:
        listener.close()


def test_an_over_long_reply_is_refused_by_the_door_client(folder):
    from edge.service.lock_client import DoorClient
    from edge.service.protocol import MAX_REPLY_LINE

    path = folder / "door.sock"
    listener = bind_unix_listener(path)
    try:
        server = _serve_once(listener, b"x" * (MAX_REPLY_LINE + 2))
        with pytest.raises(DoorUnavailable, match="longer than"):
            DoorClient(str(path), timeout=5.0).status()
        server.join(5)
    finally:
        listener.close()
