"""The enrollment control socket: a second process enrolls while the recognizer's replay loop runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest

from edge.config import load_config
from edge.enrollment.control import ControlClient, ControlServer, attach_control_server
from edge.enrollment.errors import ControlPermissionError, ServiceNotRunning
from edge.gallery import Gallery

from .conftest import MODELS, ROOT

pytestmark = pytest.mark.skipif(not (MODELS / "sface-int8" / "manifest.json").exists(), reason="no sface-int8 bundle")


@pytest.fixture
def short_dir():
    path = Path(tempfile.mkdtemp(prefix="edge-", dir="/tmp"))  # unix socket paths must stay short
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(tmp_path: Path, socket_dir: Path, **camera) -> Path:
    cam = {"source": '"replay"', "fps": "30.0", "loop": "true", **camera}
    path = tmp_path / "edge.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{MODELS}"\n'
        '[embedder]\nmodel = "sface-int8"\n'  # threshold 1.0 is an SFace distance, as the embedder fixture's
        "[decision]\nthreshold = 1.0\n[demo]\nenroll = true\n"
        "[camera]\n" + "".join(f"{k} = {v}\n" for k, v in cam.items())
        + f'[enrollment]\nsocket_path = "{socket_dir / "control.sock"}"\nmin_sample_interval = 0.0\ntimeout = 600.0\n'
    )
    return path


@pytest.fixture
def service(tmp_path, short_dir):
    """The recognizer on a looping replay with the control server attached, running in a thread."""
    from edge.app import Recognizer

    config_path = write_config(tmp_path, short_dir)
    config = load_config(config_path)
    state = SimpleNamespace(config_path=config_path, config=config, decisions=[], ready=threading.Event(),
                            stop=threading.Event(), error=None)

    def loop():
        try:
            # SQLite handles belong to the thread that opened them: build the recognizer here.
            state.recognizer = Recognizer(config)
            state.server = attach_control_server(state.recognizer, config)
            state.ready.set()
            state.recognizer.run(on_frame=state.server.on_frame, on_decision=state.decisions.append, stop=state.stop)
        except BaseException as exc:  # surfaced by the test
            state.error = exc
            state.ready.set()
        finally:
            if hasattr(state, "server"):
                state.server.stop()
            if hasattr(state, "recognizer"):
                state.recognizer.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert state.ready.wait(60) and state.error is None, state.error
    yield state
    state.stop.set()
    thread.join(30)


def enroll_cmd(config_path: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli", "enroll", "add", name, "-c", str(config_path), *args]


REPLAY_FRAMES = len(list((ROOT / "edge" / "demo" / "replay").iterdir()))


def wait_until(condition, what: str, timeout: float = 600.0) -> None:
    """Poll an observable condition; the timeout only ends a hung test (a slow machine must not fail it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_second_process_enrolls_while_the_replay_loop_runs(service, tmp_path):
    sheet = tmp_path / "sheet.png"
    frames_before = service.server.frames
    result = subprocess.run(enroll_cmd(service.config_path, "Visitor", "--samples", "3", "--contact-sheet", str(sheet)),
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "enrolled Visitor: 3 samples added (3 in all)" in result.stdout, result.stdout
    assert "with the recognizer" in result.stderr and "accepted 3/3" in result.stderr, result.stderr
    assert service.server.frames > frames_before  # the door kept running all along
    image = cv2.imread(str(sheet))
    assert image.shape == (4 + 116, 4 + 3 * 116, 3)
    # The running recognizer picks the new person up without a restart ...
    wait_until(lambda: service.recognizer.matcher.identities == 3, "the new person in the matcher")
    # ... and grants them within the next two passes of the replay (counted in frames, not seconds).
    seen, start = len(service.decisions), service.server.frames
    wait_until(lambda: any(d.name == "Visitor" for d in service.decisions[seen:])
               or service.server.frames - start > 2 * REPLAY_FRAMES, "a Visitor decision or two replay passes")
    assert any(d.name == "Visitor" and d.outcome.value == "granted" for d in service.decisions[seen:])
    # Removal is picked up too: Visitor is never granted again.
    with Gallery(service.config.gallery_path()) as gallery:
        gallery.remove("Visitor")
    wait_until(lambda: service.recognizer.matcher.identities == 2, "the removal in the matcher")


def test_a_second_enrollment_at_the_same_time_is_refused(service):
    first = subprocess.Popen(enroll_cmd(service.config_path, "Visitor", "--samples", "50"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        while service.server._active is None:
            time.sleep(0.1)
        second = subprocess.run(enroll_cmd(service.config_path, "Other"), cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 75 and "busy: Visitor is being enrolled" in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("where", ["service", "local"])
def test_killing_the_enroll_tool_midway_leaves_no_half_enrolled_person(where, tmp_path, short_dir, request):
    if where == "service":
        state = request.getfixturevalue("service")
        config_path, config = state.config_path, state.config
    else:
        config_path = write_config(tmp_path, short_dir, fps="0.0")
        config = load_config(config_path)
    # 20 samples cannot be had from a replay of 8 frames per person: the tool is mid-way when killed.
    proc = subprocess.Popen(enroll_cmd(config_path, "Visitor", "--samples", "20"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        for line in proc.stderr:
            if "accepted 2/20" in line or time.monotonic() > deadline:
                break
        assert "accepted 2/20" in line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    if where == "service":
        deadline = time.monotonic() + 10
        while state.server._active is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.server._active is None  # the server noticed and dropped the session
    with Gallery(config.gallery_path()) as gallery:
        assert not gallery.has_person("Visitor")
        assert gallery.db.execute("SELECT COUNT(*) FROM samples s LEFT JOIN people p ON p.id = s.person_id "
                                  "WHERE p.id IS NULL").fetchone()[0] == 0


def test_local_camera_when_no_service_runs(tmp_path, short_dir):
    config_path = write_config(tmp_path, short_dir, fps="0.0")
    result = subprocess.run(enroll_cmd(config_path, "Visitor", "--samples", "2"), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "using the camera here" in result.stderr and "enrolled Visitor: 2 samples added" in result.stdout
    with Gallery(load_config(config_path).gallery_path()) as gallery:
        assert gallery.people()[-1].name == "Visitor" and gallery.people()[-1].samples == 2


# -- permissions ---------------------------------------------------------------------------------
class _Embedder:
    model_id = "test:0"
    input_size = 112


def _in_child(path: Path, uid: int, gid: int, groups: list[int]) -> int:
    """fork; drop to uid/gid/groups; try a ping. 0: permission refused, 1: answered, 2: other error."""
    pid = os.fork()
    if pid == 0:  # child: no pytest, no exceptions past here
        code = 2
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with ControlClient(path) as client:
                events = list(client.request({"op": "ping"}))
                code = 1 if events and events[0]["event"] == "pong" else 2
        except ControlPermissionError:
            code = 0
        except BaseException as exc:
            try:
                os.write(2, f"child: {exc!r}\n".encode())
            finally:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
@pytest.mark.parametrize("mode", [0o660, 0o666])
def test_another_uid_is_refused(tmp_path, short_dir, mode):
    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, _Embedder(), lambda: 1.0, mode=mode, group="4242").start()
    try:
        path = server.path
        assert (os.stat(path).st_mode & 0o777, os.stat(path).st_gid) == (mode, 4242)
        # 0660: the file mode already stops a stranger; 0666: SO_PEERCRED does.
        assert _in_child(path, 12345, 12345, []) == 0
        # A member of the socket's group is let in (by file mode and by the peer check).
        assert _in_child(path, 12345, 12345, [4242]) == 1
        with ControlClient(path) as client:  # root
            assert next(client.request({"op": "ping"}))["model"] == "test:0"
    finally:
        server.stop()
    assert not path.exists()
    with pytest.raises(ServiceNotRunning):
        ControlClient(path).connect()


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path, short_dir):
    from edge.errors import SocketInUseError

    config = load_config(write_config(tmp_path, short_dir))
    first = ControlServer(config, _Embedder(), lambda: 1.0).start()
    try:
        with pytest.raises(SocketInUseError, match="already serves"):
            ControlServer(config, _Embedder(), lambda: 1.0).start()
        # The refused second start left the first one alone: same file, still answering.
        with ControlClient(first.path, timeout=5.0) as client:
            assert next(client.request({"op": "ping"}))["event"] == "pong"
    finally:
        first._halt.set()
        first._thread.join()
        first._listener.sock.close()  # "crash": the file stays behind
    assert first.path.exists()
    second = ControlServer(config, _Embedder(), lambda: 1.0).start()
    try:
        with ControlClient(second.path, timeout=5.0) as client:
            assert next(client.request({"op": "ping"}))["event"] == "pong"
    finally:
        second.stop()
    assert not second.path.exists()


def test_rejection_reasons_reach_the_client_through_the_socket(tmp_path, short_dir, detector, embedder):
    """Crafted frames fed to the server's frame observer: the client hears why each was refused."""
    import numpy as np

    from edge.pipeline import FrameResult
    from edge.types import Frame

    from .test_enrollment import door_frame

    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, embedder, lambda: 1.0).start()
    events = []
    client = threading.Thread(target=lambda: events.extend(
        ControlClient(server.path).connect().request({"op": "enroll", "name": "Visitor", "samples": 1})))
    client.start()
    try:
        while server._active is None:
            time.sleep(0.05)
        photo = cv2.imread(str(ROOT / "tests" / "fixtures" / "faces" / "impostor_1.jpg"))
        other = cv2.imread(str(ROOT / "tests" / "fixtures" / "faces" / "person_b_1.jpg"))
        good = door_frame(photo)
        frames = [cv2.GaussianBlur(good, (0, 0), 4), (good * 0.25).astype(np.uint8), door_frame(photo, 70),
                  door_frame(photo, 260, second=other), np.full_like(good, 120), good]
        for i, image in enumerate(frames):
            frame = Frame(i, 100.0 + i, image, image, 1.0, "test")
            server.on_frame(FrameResult(frame, tuple(detector.detect_image(image)), ()))
        client.join(30)
    finally:
        server.stop()
    rejected = [e["reasons"][0]["code"] for e in events if e["event"] == "rejected"]
    assert rejected == ["blurred", "too_dark", "too_far", "two_faces", "no_face"]
    assert [e["event"] for e in events][-2:] == ["accepted", "done"]
    with Gallery(config.gallery_path()) as gallery:
        assert gallery.people()[0].name == "Visitor" and gallery.people()[0].samples == 1


# -- robustness: strangers, floods, malformed and slow requests ---------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_refusal_warnings_are_rate_limited_with_a_count(tmp_path, short_dir, caplog):
    import logging

    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, _Embedder(), lambda: 1.0, mode=0o666, group="4242").start()
    clock = SimpleNamespace(now=100.0)
    server._refusal_log.clock = lambda: clock.now
    try:
        with caplog.at_level(logging.WARNING, logger="edge.enrollment.control"):
            assert [_in_child(server.path, 12345, 12345, []) for _ in range(5)] == [0] * 5
            refused = [r.getMessage() for r in caplog.records if "refused uid" in r.getMessage()]
            assert len(refused) == 1 and "more refused" not in refused[0]
            clock.now += 10.5
            assert _in_child(server.path, 12345, 12345, []) == 0
            refused = [r.getMessage() for r in caplog.records if "refused uid" in r.getMessage()]
            assert len(refused) == 2 and "(4 more refused since the last warning)" in refused[1]
    finally:
        server.stop()


def _lines(sock) -> list[dict]:
    import json

    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_a_slow_request_times_out_as_a_whole(tmp_path, short_dir):
    """A byte now and then used to keep a connection (and its thread) for as long as the client liked."""
    import socket

    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, _Embedder(), lambda: 1.0, request_timeout=1.0).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(server.path))
            started = time.monotonic()
            try:
                for byte in b'{"op": "ping"':
                    s.send(bytes([byte]))
                    time.sleep(0.2)
            except BrokenPipeError:
                pass
            replies = _lines(s)
            assert time.monotonic() - started < 4
        assert [r.get("code") for r in replies] == ["timeout"]
        with ControlClient(server.path) as client:
            assert next(client.request({"op": "ping"}))["event"] == "pong"
    finally:
        server.stop()


def test_an_over_long_request_is_answered_and_not_buffered(tmp_path, short_dir):
    import socket

    from edge.enrollment.control import MAX_LINE

    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, _Embedder(), lambda: 1.0).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(server.path))
            s.sendall(b"x" * (MAX_LINE + 100))  # no newline: the server must stop reading, not wait for one
            replies = _lines(s)
        assert [r.get("code") for r in replies] == ["bad_request"], replies
        assert "longer than" in replies[0]["message"]
        with ControlClient(server.path) as client:
            assert next(client.request({"op": "ping"}))["event"] == "pong"
    finally:
        server.stop()


def test_connections_past_the_cap_are_refused_busy_in_process(tmp_path, short_dir):
    import socket

    config = load_config(write_config(tmp_path, short_dir))
    server = ControlServer(config, _Embedder(), lambda: 1.0, max_connections=2, request_timeout=30.0).start()
    idle = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(server.path))
            idle.append(s)
        deadline = time.monotonic() + 5
        while server._slots._value and time.monotonic() < deadline:  # both admitted
            time.sleep(0.01)
        with ControlClient(server.path) as client:
            events = list(client.request({"op": "ping"}))
        assert events[0]["event"] == "error" and events[0]["code"] == "busy"
        idle.pop().close()  # a slot frees when its client leaves
        deadline = time.monotonic() + 5
        while not server._slots._value and time.monotonic() < deadline:
            time.sleep(0.01)
        with ControlClient(server.path) as client:
            assert next(client.request({"op": "ping"}))["event"] == "pong"
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_the_throttle_counts_what_it_held_back():
    from edge.enrollment.control import _Throttle

    clock = SimpleNamespace(now=0.0)
    throttle = _Throttle(10.0, clock=lambda: clock.now)
    assert throttle() == 0
    assert [throttle() for _ in range(3)] == [None] * 3
    clock.now = 9.9
    assert throttle() is None
    clock.now = 10.0
    assert throttle() == 4 and throttle() is None
