"""Hostile local users against the two unix sockets, as real processes: the door actuator's (``edge door``)
and the enrollment control socket of the running recognizer (``edge serve``)."""

from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import socket
import stat
import time
from pathlib import Path

import pytest

from edge.service.lock_client import DoorClient, DoorUnavailable

from .service_helpers import (
    edge_env,
    fill_backlog,
    read_events,
    relay_periods,
    start_edge,
    stop_process,
    wait_for_socket,
    world_dir,
    write_toml,
)

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


class _Actuator:
    def __init__(self, **door) -> None:
        self.folder = world_dir()
        self.sock = self.folder / "door.sock"
        self.events_log = self.folder / "door-events.jsonl"
        self.config = write_toml(self.folder / "edge.toml", {"door": {
            "socket": str(self.sock), "recognizer_user": str(os.getuid()), "events_log": str(self.events_log),
            **door}})
        self.proc = start_edge(["door", "-c", str(self.config)], edge_env(), self.folder / "door.log")
        wait_for_socket(self.sock)

    def events(self) -> list[dict]:
        return read_events(self.events_log)

    def close(self) -> None:
        stop_process(self.proc, 10)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def door():
    pytest.importorskip("gpiozero", reason="gpiozero is not installed (pip install -e '.[test]')")
    made = []

    def make(**door):
        made.append(_Actuator(**door))
        return made[-1]

    yield make
    for a in made:
        a.close()


def _as_stranger(groups: list[int]) -> None:
    os.setgroups(groups)
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _hold_connections(path: str, count: int, groups: list[int], stop_fd: int, report_fd: int, partial: bytes) -> None:
    """Child body: as nobody, keep ``count`` connections open (reconnecting any the server drops) until
    ``stop_fd`` is readable, then report how many connects it made and how many it held at the end."""
    _as_stranger(groups)
    selector = selectors.DefaultSelector()
    connects = failures = 0

    def open_one() -> bool:
        nonlocal connects, failures
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(path)
            if partial:
                s.send(partial)
        except OSError:
            failures += 1
            s.close()
            return False
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
        connects += 1
        return True

    for _ in range(count):
        open_one()
    os.write(report_fd, b"R")  # ready: the flood is in place
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([stop_fd], [], [], 0)[0]:
            break
        for key, _ in selector.select(0.05):
            try:
                gone = key.fileobj.recv(4096) == b""
            except BlockingIOError:
                continue
            except OSError:
                gone = True
            if gone:
                selector.unregister(key.fileobj)
                key.fileobj.close()
        while len(selector.get_map()) < count and open_one():
            pass
    held = len(selector.get_map())
    os.write(report_fd, json.dumps({"connects": connects, "failures": failures, "held": held}).encode())


class _Flood:
    """A forked child holding ``count`` connections to ``path`` as uid nobody."""

    def __init__(self, path: Path, count: int, groups: list[int], partial: bytes = b'{"op": "sta') -> None:
        self.stop_r, self.stop_w = os.pipe()
        self.report_r, self.report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 0
            try:
                os.close(self.stop_w)
                os.close(self.report_r)
                _hold_connections(str(path), count, groups, self.stop_r, self.report_w, partial)
            except BaseException as exc:
                os.write(self.report_w, json.dumps({"error": repr(exc)}).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(self.stop_r)
        os.close(self.report_w)
        ready = os.read(self.report_r, 1)
        assert ready == b"R", ready

    def stop(self) -> dict:
        os.close(self.stop_w)
        data = b""
        while chunk := os.read(self.report_r, 65536):
            data += chunk
        os.close(self.report_r)
        os.waitpid(self.pid, 0)
        return json.loads(data or b"{}")


# -- 1. the door socket -------------------------------------------------------------------------
@needs_root
def test_unlocks_get_through_200_idle_stranger_connections(door):
    psutil = pytest.importorskip("psutil")
    from edge.service.door.server import MAX_STRANGER_CONNECTIONS

    a = door(pulse_seconds=0.2, max_unlocks_per_minute=60, flood_requests=1000)
    fds_before = psutil.Process(a.proc.pid).num_fds()
    group = os.stat(a.sock).st_gid  # the strangers are members of the socket's group, like group edge
    flood = _Flood(a.sock, 200, [group])
    results, took = [], []
    try:
        time.sleep(1.0)  # let the flood settle into the actuator's table
        # The strangers' share of the actuator: a few slots, whatever they throw at it (+1: the newcomer
        # is accepted before it can be told apart and an older one evicted).
        fds_flooded = max(psutil.Process(a.proc.pid).num_fds() for _ in range(20))
        assert fds_flooded <= fds_before + MAX_STRANGER_CONNECTIONS + 1, (fds_before, fds_flooded)
        client = DoorClient(str(a.sock), timeout=1.0)  # the recognizer's default door.request_timeout
        for _ in range(10):
            started = time.monotonic()
            try:
                results.append(client.unlock("Ada")["ok"] is True)
            except DoorUnavailable:
                results.append(False)
            took.append(time.monotonic() - started)
            time.sleep(0.35)  # past the 0.2 s pulse: every unlock is a pulse of its own
    finally:
        report = flood.stop()
    print(f"\nunlocks under 200 idle stranger connections: {sum(results)}/10; "
          f"each took {min(took) * 1000:.1f}..{max(took) * 1000:.1f} ms (median "
          f"{sorted(took)[5] * 1000:.1f} ms); flood: {report}")
    assert "error" not in report, report
    # The flood was there all along: it kept reconnecting whatever the actuator dropped.
    assert report["connects"] > 400 and report["held"] > 0, report
    assert sum(results) == 10, (results, took)
    assert len(relay_periods(a.events())) == 10
    status = DoorClient(str(a.sock)).status()
    assert status["relay"] is False and status["connections_dropped"] > 0


def _connect_as_stranger(path: Path, groups: list[int]) -> str:
    """fork; become nobody with ``groups``; ask for status. Returns 'ok', 'EACCES' or the error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reported through the pipe
        answer = "?"
        try:
            os.close(read_fd)
            _as_stranger(groups)
            answer = "ok" if DoorClient(str(path)).status()["ok"] is True else "not ok"
        except BaseException as exc:
            answer = "EACCES" if "Permission denied" in str(exc) else repr(exc)
        finally:
            os.write(write_fd, answer.encode())
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        return f.read()


def test_the_hand_bound_door_socket_is_0660(door):
    a = door()
    mode = stat.S_IMODE(os.stat(a.sock).st_mode)
    assert mode == 0o660, oct(mode)  # it was 0666: every local user could hold its connections
    if os.geteuid() == 0:
        assert _connect_as_stranger(a.sock, []) == "EACCES"
        assert _connect_as_stranger(a.sock, [os.stat(a.sock).st_gid]) == "ok"


def test_bind_unix_listener_is_not_world_accessible_by_default():
    from edge.sockets import bind_unix_listener

    folder = world_dir()
    try:
        old = os.umask(0)  # even under a permissive umask
        try:
            listener = bind_unix_listener(folder / "x.sock")
        finally:
            os.umask(old)
        try:
            assert stat.S_IMODE(os.stat(folder / "x.sock").st_mode) == 0o660
            assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        finally:
            listener.close()
        assert not (folder / "x.sock").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_door_client_waits_out_a_full_backlog(tmp_path):
    """A connect storm can fill a listen backlog; the recognizer's request then waits instead of failing."""
    import threading

    path = tmp_path / "d.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    filler = fill_backlog(path)
    try:
        started = time.monotonic()
        with pytest.raises(DoorUnavailable, match="did not answer within"):
            DoorClient(str(path), timeout=0.3).status()
        assert time.monotonic() - started >= 0.25  # it waited, it did not fail at once

        def serve():  # the actuator catches up: drains the flood, then answers
            for _ in range(len(filler)):
                listener.accept()[0].close()
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b'{"ok": true}\n')

        timer = threading.Timer(0.2, serve)
        timer.start()
        assert DoorClient(str(path), timeout=2.0).status() == {"ok": True}
        timer.join()
    finally:
        for s in filler:
            s.close()
        listener.close()


# -- 3. the enrollment control socket of the running recognizer ----------------------------------------
SFACE = ROOT / "models" / "sface-int8"
REPLAY = ROOT / "edge" / "demo" / "replay"


class _Recognizer:
    """``edge serve`` on the fake camera (the demo replay, then a stall), with its control socket."""

    def __init__(self) -> None:
        self.folder = world_dir()
        (self.folder / "camera.script").write_text(f"images {REPLAY}\nstall 600\n")
        self.sock = self.folder / "control.sock"
        self.log_path = self.folder / "serve.log"
        self.config = write_toml(self.folder / "edge.toml", {
            "state_dir": str(self.folder / "state"),
            "camera": {"source": "fake", "path": "camera.script", "fps": 20.0},
            "decision": {"threshold": 1.128},
            "demo": {"enroll": True},
            "door": {"socket": ""},
            "enrollment": {"socket_path": str(self.sock)},
        })
        self.proc = start_edge(["serve", "-c", str(self.config)], edge_env(), self.log_path)
        wait_for_socket(self.sock, timeout=90)

    def log(self) -> str:
        return self.log_path.read_text()

    def threads(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).num_threads()

    def ping(self) -> dict:
        from edge.enrollment.control import ControlClient

        with ControlClient(self.sock, timeout=5.0) as client:
            return next(client.request({"op": "ping"}))

    def close(self) -> None:
        stop_process(self.proc, 15)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def recognizer():
    if not (SFACE / "manifest.json").is_file():
        pytest.skip("models/sface-int8 is not built")
    pytest.importorskip("psutil")
    r = _Recognizer()
    yield r
    r.close()


def _raw_request(path: Path, payload: bytes, timeout: float = 5.0) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(payload)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.mark.parametrize("payload", [b"[]", b"null", b"3", b'"x"', b"not json", b"\xff\xfe", b"[" * 60000,
                                     b'{"op": 7}', b'{"op": "enroll", "name": ["Ada"]}',
                                     b'{"op": "enroll", "name": "Ada", "samples": "lots"}',
                                     b'{"op": "enroll", "name": "Ada", "timeout": NaN}'])
def test_a_malformed_control_request_is_answered_and_the_server_keeps_serving(recognizer, payload):
    replies = _raw_request(recognizer.sock, payload + b"\n")
    assert len(replies) == 1 and replies[0]["event"] == "error", replies
    assert replies[0]["code"] == "bad_request", replies
    assert recognizer.ping()["event"] == "pong"
    assert "Traceback" not in recognizer.log()


def test_control_connections_are_capped_and_time_out(recognizer):
    from edge.enrollment.control import MAX_CONNECTIONS, REQUEST_TIMEOUT

    assert recognizer.ping()["event"] == "pong"
    before = recognizer.threads()
    held, replies = [], []
    try:
        for _ in range(300):  # idle: connected, never a request
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(recognizer.sock))  # blocking: waits for room in the backlog
            s.settimeout(REQUEST_TIMEOUT + 5.0)
            held.append(s)
        peak = max(recognizer.threads() for _ in range(20))
        # Refused ones are told why, at once; the admitted ones time out on their missing request.
        started = time.monotonic()
        for s in held:
            try:
                line = s.recv(4096).split(b"\n")[0]
            except (TimeoutError, ConnectionResetError):
                line = b""
            replies.append(json.loads(line)["code"] if line else None)
        waited = time.monotonic() - started
        during = recognizer.ping()  # the 300 are still open on this side
    finally:
        for s in held:
            s.close()
    print(f"\ncontrol socket: {before} threads before, at most {peak} with 300 idle connections; "
          f"{replies.count('busy')} refused busy, {replies.count('timeout')} timed out after {waited:.1f} s")
    assert peak <= before + MAX_CONNECTIONS, (before, peak)
    assert replies.count("timeout") == MAX_CONNECTIONS and replies.count("busy") == 300 - MAX_CONNECTIONS, replies
    assert waited <= REQUEST_TIMEOUT + 2.0
    assert during["event"] == "pong" and recognizer.ping()["event"] == "pong"
    deadline = time.monotonic() + 5
    while recognizer.threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recognizer.threads() <= before


@needs_root
def test_refused_uids_are_logged_at_most_once_per_interval(recognizer):
    recognizer.sock.chmod(0o666)  # a misconfigured mode: SO_PEERCRED is all that stops a stranger
    try:
        before = recognizer.threads()
        outcomes = [_ping_as_stranger(recognizer.sock) for _ in range(30)]
        after = recognizer.threads()
    finally:
        recognizer.sock.chmod(0o660)
    assert outcomes == ["permission"] * 30
    assert recognizer.log().count("refused uid 65534") == 1, recognizer.log()
    assert after <= before  # refusals are answered on the listener thread: no thread per stranger
    assert recognizer.ping()["event"] == "pong"


def _ping_as_stranger(path: Path) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reported through the pipe
        answer = "?"
        try:
            os.close(read_fd)
            _as_stranger([])
            from edge.enrollment.control import ControlClient
            from edge.enrollment.errors import ControlPermissionError

            try:
                with ControlClient(path, timeout=5.0) as client:
                    answer = repr(list(client.request({"op": "ping"})))
            except ControlPermissionError:
                answer = "permission"
        except BaseException as exc:
            answer = repr(exc)
        finally:
            os.write(write_fd, answer.encode())
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        return f.read()
