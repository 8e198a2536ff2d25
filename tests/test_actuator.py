"""``edge door`` as a real process with gpiozero's mock pin factory (GPIOZERO_PIN_FACTORY=mock)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("gpiozero", reason="gpiozero is not installed (pip install -e '.[test]')")

from edge.service.lock_client import DoorClient, DoorUnavailable

from .service_helpers import (NotifySocket, edge_env, read_events, relay_periods, start_edge, wait_for_socket,
                              world_dir, write_toml)


class Actuator:
    def __init__(self, folder, **door):
        self.folder = folder
        self.sock = folder / "door.sock"
        self.events_log = folder / "door-events.jsonl"
        door = {"socket": str(self.sock), "recognizer_user": str(os.getuid()), "pulse_seconds": 0.5,
                "events_log": str(self.events_log), **door}
        self.config = write_toml(folder / "edge.toml", {"door": door})
        self.client = DoorClient(str(self.sock), timeout=2.0)
        self.proc = None

    def start(self, notify: NotifySocket | None = None):
        env = edge_env(**({"NOTIFY_SOCKET": notify.path} if notify else {}))
        self.proc = start_edge(["door", "-c", str(self.config)], env, self.folder / "door.log")
        wait_for_socket(self.sock)
        return self

    def events(self):
        return read_events(self.events_log)

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def log(self):
        return (self.folder / "door.log").read_text()


@pytest.fixture
def actuator_factory():
    made = []

    def make(**door):
        a = Actuator(world_dir(), **door)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop(signal.SIGKILL)
        shutil.rmtree(a.folder, ignore_errors=True)


def wait_relay(client, on: bool, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.status()["relay"] is on:
            return True
        time.sleep(0.01)
    return False


def test_ready_is_notified_with_the_relay_off(actuator_factory):
    a = actuator_factory()
    notify = NotifySocket(a.folder)
    a.start(notify)
    ready = notify.wait_for("READY", 10)
    assert ready is not None and ready[1]["READY"] == "1"
    assert a.client.status()["relay"] is False
    assert a.events()[0]["reason"] == "start" and a.events()[0]["on"] is False
    assert a.stop() == 0


def test_unlock_energises_the_relay_for_the_pulse_length(actuator_factory):
    a = actuator_factory(pulse_seconds=0.5).start()
    reply = a.client.unlock("Ada Lovelace", 0.61, 3, "sface-int8:abc")
    assert reply == {"ok": True, "relay": True, "pulse_s": 0.5}
    assert a.client.status()["relay"] is True
    assert wait_relay(a.client, False, 2.0)
    (on, off), = relay_periods(a.events())
    assert 0.45 <= off - on <= 0.8
    unlock = [e for e in a.events() if e["event_type"] == "unlock"]
    assert unlock[0]["person"] == "Ada Lovelace"
    # A second request while the relay is on does not stretch the pulse.
    a.client.unlock("Ada Lovelace")
    assert a.client.unlock("Ada Lovelace")["already_on"] is True
    assert wait_relay(a.client, False, 2.0)
    assert all(off - on <= 0.8 for on, off in relay_periods(a.events()))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_unlock_from_another_uid_is_refused(actuator_factory):
    a = actuator_factory(pulse_seconds=0.5).start()
    group = os.stat(a.sock).st_gid  # the socket is 0660: a member of its group, like group edge on a Pi
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and asks to unlock
        try:
            os.close(read_fd)
            os.setgroups([group])
            os.setgid(65534)
            os.setuid(65534)
            replies = [DoorClient(str(a.sock)).unlock("Mallory"), DoorClient(str(a.sock)).lock(),
                       DoorClient(str(a.sock)).status()]
            os.write(write_fd, json.dumps(replies).encode())
        except BaseException as exc:  # pragma: no cover - reported to the parent
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        replies = json.loads(f.read())
    assert isinstance(replies, list), replies
    unlock, lock, status = replies
    assert unlock == {"ok": False, "error": "forbidden"}
    assert lock == {"ok": False, "error": "forbidden"}
    assert status["ok"] is True and status["relay"] is False  # read-only status is fine
    assert a.client.status()["forbidden"] == 2
    assert relay_periods(a.events()) == []
    refused = [e for e in a.events() if e["event_type"] == "unlock_refused"]
    assert refused and refused[0]["uid"] == 65534


def test_unlocks_are_rate_limited(actuator_factory):
    a = actuator_factory(pulse_seconds=0.2, max_unlocks_per_minute=2).start()
    for _ in range(2):
        assert a.client.unlock("Ada")["ok"] is True
        assert wait_relay(a.client, False)
    reply = a.client.unlock("Ada")
    assert reply["ok"] is False and reply["error"] == "rate_limited" and reply["retry_after"] > 50
    assert a.client.status()["relay"] is False
    assert len(relay_periods(a.events())) == 2


def test_a_flood_turns_the_relay_off_and_locks_out(actuator_factory):
    a = actuator_factory(pulse_seconds=20.0, flood_requests=5, flood_window_seconds=10.0, lockout_seconds=30.0).start()
    assert a.client.unlock("Ada")["ok"] is True
    assert a.client.status()["relay"] is True
    replies = [a.client.unlock("Ada") for _ in range(5)]
    assert replies[-1] == {"ok": False, "error": "lockout", "retry_after": 30.0}
    status = a.client.status()
    assert status["relay"] is False and status["lockout_remaining_s"] > 25 and status["lockouts"] == 1
    assert a.client.unlock("Ada")["error"] == "lockout"
    assert [e["reason"] for e in a.events() if e["event_type"] == "relay"] == ["start", "unlock", "flood"]
    assert any(e["event_type"] == "door_lockout" for e in a.events())


def test_sigterm_mid_pulse_turns_the_relay_off(actuator_factory):
    a = actuator_factory(pulse_seconds=20.0).start()
    assert a.client.unlock("Ada")["ok"] is True
    assert a.stop(signal.SIGTERM) == 0
    last = a.events()[-1]
    assert last["event_type"] == "relay" and last["on"] is False and last["reason"] == "stop"
    (on, off), = relay_periods(a.events())
    assert off - on < 5


def test_sigkill_mid_pulse_then_the_next_start_drives_the_relay_off(actuator_factory):
    a = actuator_factory(pulse_seconds=20.0).start()
    assert a.client.unlock("Ada")["ok"] is True
    a.stop(signal.SIGKILL)
    assert relay_periods(a.events())[-1][1] is None  # killed while on: nothing could turn it off
    # ExecStopPost=edge door --off, then Restart= starts it again: both drive the pin off.
    off = subprocess.run([sys.executable, "-m", "edge.cli", "door", "--off", "-c", str(a.config)],
                         env=edge_env(), capture_output=True, text=True, timeout=60)
    assert off.returncode == 0, off.stderr
    assert "relay GPIO17 off" in off.stdout
    count = len(a.events())
    a.start()
    assert a.client.status()["relay"] is False
    restarted = a.events()[count]
    assert restarted["event_type"] == "relay" and restarted["on"] is False and restarted["reason"] == "start"


def test_recognizer_killed_mid_pulse_leaves_the_relay_off(actuator_factory):
    a = actuator_factory(pulse_seconds=0.5).start()
    code = (
        "import sys, time; from edge.service.lock_client import DoorClient; "
        f"print(DoorClient({str(a.sock)!r}).unlock('Ada'), flush=True); time.sleep(60)"
    )
    recognizer = subprocess.Popen([sys.executable, "-c", code], env=edge_env(), stdout=subprocess.PIPE, text=True)
    assert "'ok': True" in recognizer.stdout.readline()
    recognizer.kill()
    recognizer.wait()
    # A half-sent request from a client that dies is dropped too.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(a.sock))
        s.sendall(b'{"op": "unl')
    assert wait_relay(a.client, False, 2.0)
    (on, off), = relay_periods(a.events())
    assert off - on <= 0.8


def test_garbage_is_answered_and_never_unlocks(actuator_factory):
    a = actuator_factory().start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(str(a.sock))
        s.sendall(b"not json\n[1,2]\n{\"op\": \"open_sesame\"}\n")
        replies = b""
        while replies.count(b"\n") < 3:
            replies += s.recv(4096)
    errors = [json.loads(line)["error"] for line in replies.splitlines()]
    assert errors == ["bad_request"] * 3
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(str(a.sock))
        s.sendall(b"x" * 10000)
        try:
            assert s.recv(10) == b""  # over-long line: connection closed
        except ConnectionResetError:
            pass
    assert a.client.status()["relay"] is False and relay_periods(a.events()) == []


def test_a_second_actuator_does_not_take_over_a_served_socket(actuator_factory):
    a = actuator_factory().start()
    inode = os.lstat(a.sock).st_ino
    # Same socket, its own events log: the second one's start/stop relay lines stay out of the first's.
    second = write_toml(a.folder / "second.toml", {"door": {
        "socket": str(a.sock), "recognizer_user": str(os.getuid()), "events_log": str(a.folder / "second.jsonl")}})
    result = subprocess.run([sys.executable, "-m", "edge.cli", "door", "-c", str(second)], env=edge_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 69, result.stderr
    assert "another process already serves" in result.stderr and str(a.sock) in result.stderr
    assert os.lstat(a.sock).st_ino == inode  # the first one's socket, not unlinked and rebound
    assert a.proc.poll() is None and a.client.status()["ok"] is True
    assert a.client.unlock("Ada")["ok"] is True  # and it still unlocks
    # Once the first is gone (SIGKILL: the file stays), the next start replaces the stale socket.
    first_pid = a.client.status()["pid"]
    a.stop(signal.SIGKILL)
    assert a.sock.exists()
    a.start()
    status = a.client.status()
    assert status["relay"] is False and status["pid"] not in (first_pid, None)


def test_socket_activation(tmp_path):
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (apt install systemd)")
    folder = world_dir()
    try:
        sock = folder / "activated.sock"
        config = write_toml(folder / "edge.toml", {"door": {
            "socket": str(folder / "not-used.sock"), "recognizer_user": str(os.getuid()),
            "events_log": str(folder / "events.jsonl")}})
        env = edge_env()
        passed = [f"-E{key}={env[key]}" for key in ("GPIOZERO_PIN_FACTORY", "PYTHONPATH")]
        proc = subprocess.Popen([activate, "-l", str(sock), *passed, sys.executable, "-m", "edge.cli", "door",
                                 "-c", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for_socket(sock)
            reply = DoorClient(str(sock), timeout=30).status()  # the first connection starts the actuator
            assert reply["ok"] is True and reply["relay"] is False
            assert not (folder / "not-used.sock").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=10)[0].decode()
        assert "listening on socket activation" in out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_status_from_the_command_line(actuator_factory):
    a = actuator_factory().start()
    result = subprocess.run([sys.executable, "-m", "edge.cli", "door", "--status", "-c", str(a.config)],
                            env=edge_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["relay"] is False
    a.stop()
    result = subprocess.run([sys.executable, "-m", "edge.cli", "door", "--status", "-c", str(a.config)],
                            env=edge_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 69 and "door.sock" in result.stderr


def test_unreachable_actuator_is_a_clear_error(tmp_path):
    with pytest.raises(DoorUnavailable, match="door.sock"):
        DoorClient(str(tmp_path / "door.sock"), timeout=0.2).unlock("Ada")


def test_bad_door_config_keeps_the_actuator_down(tmp_path):
    config = write_toml(tmp_path / "edge.toml", {"door": {"pulse_seconds": 120}})
    result = subprocess.run([sys.executable, "-m", "edge.cli", "door", "-c", str(config)], env=edge_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "door.pulse_seconds: 120.0 is out of range" in result.stderr
    config = write_toml(tmp_path / "edge.toml", {"door": {"recognizer_user": "no-such-user-here",
                                                          "socket": str(tmp_path / "d.sock")}})
    result = subprocess.run([sys.executable, "-m", "edge.cli", "door", "-c", str(config)], env=edge_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "no such user 'no-such-user-here'" in result.stderr


# -- the controller does not trust its numbers (config validation could be bypassed or broken) -------------
class _FakeRelay:
    def __init__(self):
        self.is_on = False
        self.ons = 0

    def on(self):
        self.is_on = True
        self.ons += 1

    def off(self):
        self.is_on = False


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _controller(**door):
    """A DoorController over a config that skipped validation (a plain namespace: any value goes)."""
    import dataclasses
    from types import SimpleNamespace

    from edge.config import DoorConfig
    from edge.service.door.controller import DoorController

    cfg = SimpleNamespace(**{**dataclasses.asdict(DoorConfig()), **door})
    relay, clock = _FakeRelay(), _Clock()
    return DoorController(cfg, relay, clock=clock), relay, clock


def _run(controller, clock, seconds, step=0.1):
    for _ in range(round(seconds / step)):
        clock.now += step
        controller.tick()


@pytest.mark.parametrize("pulse", [float("nan"), float("inf"), float("-inf"), 0.0, -3.0, "3", None])
def test_an_unusable_pulse_never_energises_the_relay(pulse):
    controller, relay, clock = _controller(pulse_seconds=pulse)
    reply = controller.unlock({"person": "Ada"})
    assert reply["ok"] is False and reply["error"] == "bad_config"
    assert relay.ons == 0 and relay.is_on is False
    _run(controller, clock, 1.0)
    assert relay.ons == 0 and controller.status()["bad_pulse"] == 1


@pytest.mark.parametrize("pulse", [31.0, 1e9, 1e308])
def test_an_absurd_pulse_is_cut_to_the_maximum(pulse):
    from edge.service.door.limits import MAX_PULSE_SECONDS

    controller, relay, clock = _controller(pulse_seconds=pulse)
    reply = controller.unlock({"person": "Ada"})
    assert reply == {"ok": True, "relay": True, "pulse_s": MAX_PULSE_SECONDS}
    _run(controller, clock, MAX_PULSE_SECONDS - 0.5)
    assert relay.is_on is True
    _run(controller, clock, 1.0)
    assert relay.is_on is False and controller.pulse_until is None


def test_a_corrupted_deadline_or_clock_still_ends_the_pulse():
    controller, relay, clock = _controller(pulse_seconds=3.0)
    controller.unlock({})
    controller.pulse_until = float("nan")  # whatever set it, NaN must end the pulse, not keep it
    controller.tick()
    assert relay.is_on is False
    controller.unlock({})
    controller.pulse_until = float("inf")
    _run(controller, clock, 29.9)
    assert relay.is_on is True
    _run(controller, clock, 0.2)  # the hard cap from the pulse's start
    assert relay.is_on is False
    clock.now += 60
    controller.unlock({})
    clock.now = float("nan")
    controller.tick()
    assert relay.is_on is False


def test_nan_limits_take_the_strict_end_of_their_range():
    nan = float("nan")
    controller, relay, clock = _controller(pulse_seconds=0.5, lockout_seconds=nan, flood_requests=nan,
                                           flood_window_seconds=nan, max_unlocks_per_minute=nan,
                                           open_grace_seconds=nan, left_open_seconds=nan)
    limits = controller.limits
    assert (limits.lockout_seconds, limits.flood_requests, limits.flood_window_seconds) == (3600.0, 2, 300.0)
    assert (limits.max_unlocks_per_minute, limits.open_grace_seconds, limits.left_open_seconds) == (1, 0.0, 1.0)
    # max_unlocks_per_minute=nan once meant no rate limit at all (len >= nan is false).
    assert controller.unlock({})["ok"] is True
    _run(controller, clock, 1.0)
    assert controller.unlock({})["error"] == "rate_limited"
    # A flood still locks out, and a NaN lockout_seconds still lasts (now < now + nan is false).
    assert controller.unlock({})["error"] == "lockout"
    clock.now += 3599
    assert controller.unlock({})["error"] == "lockout"
    assert controller.status()["lockouts"] == 1 and relay.is_on is False


def test_out_of_range_limits_are_clamped_and_inf_lockout_ends():
    controller, _relay, clock = _controller(pulse_seconds=0.5, lockout_seconds=float("inf"), flood_requests=3,
                                           flood_window_seconds=-1.0, max_unlocks_per_minute=10_000)
    assert controller.limits.lockout_seconds == 3600.0 and controller.limits.flood_window_seconds == 1.0
    assert controller.limits.max_unlocks_per_minute == 60
    for _ in range(4):
        controller.unlock({})
    assert controller.unlock({})["error"] == "lockout"
    clock.now += 3601
    assert controller.unlock({})["ok"] is True


def test_the_flood_window_is_bounded_during_a_long_flood():
    controller, relay, clock = _controller(pulse_seconds=0.5, flood_requests=5, flood_window_seconds=300.0)
    for _ in range(100_000):
        controller.unlock({})
        clock.now += 0.001
    assert len(controller._requests) == 6 and controller.status()["lockout_refused"] > 99_000
    assert relay.is_on is False


def test_nan_left_open_still_reports_the_door_left_open():
    controller, _relay, clock = _controller(pulse_seconds=0.5, left_open_seconds=float("nan"),
                                           open_grace_seconds=float("nan"))
    events = []
    controller._emit_to = lambda event, record: events.append(record["event_type"])
    contact = type("C", (), {"closed": True})()
    controller.contact, controller.door_closed = contact, True
    contact.closed = False  # opened with no unlock: forced (a NaN grace must not excuse it)
    controller.tick()
    _run(controller, clock, 1.5)
    assert events[:2] == ["door_forced", "door_left_open"]
