"""Shared helpers for the door-service tests: real processes, a test notify socket, the actuator's events log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def world_dir() -> Path:
    """A temp folder every uid can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="edge-door-test-"))
    path.chmod(0o755)
    return path


class NotifySocket:
    """What systemd's side of $NOTIFY_SOCKET looks like to a test: a bound datagram socket."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, dict]] = []

    def poll(self, timeout: float) -> list[tuple[float, dict]]:
        """Collect messages for ``timeout`` seconds; returns the new ones as (monotonic, fields)."""
        new = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            new.append((time.monotonic(), fields))
        self.messages.extend(new)
        return new

    def wait_for(self, key: str, timeout: float) -> tuple[float, dict] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            item = (time.monotonic(), fields)
            self.messages.append(item)
            if key in fields:
                return item
        return None

    def close(self) -> None:
        self.sock.close()


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def relay_periods(events: list[dict]) -> list[tuple[float, float | None]]:
    """(on, off) monotonic times of each relay pulse in an actuator events log."""
    periods, on_at = [], None
    for e in events:
        if e.get("event_type") != "relay":
            continue
        if e["on"] and on_at is None:
            on_at = e["mono"]
        elif not e["on"] and on_at is not None:
            periods.append((on_at, e["mono"]))
            on_at = None
    if on_at is not None:
        periods.append((on_at, None))
    return periods


def write_toml(path: Path, sections: dict) -> Path:
    lines = []
    for key, value in sections.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            for key, value in table.items():
                lines.append(f"{key} = {'true' if value is True else 'false' if value is False else json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def edge_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_edge(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen([PYTHON, "-m", "edge.cli", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not come up")


def fill_backlog(path) -> list[socket.socket]:
    """Connect without accepting until the listener's backlog is full (what a flood does); close them after."""
    filler = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            return filler
        filler.append(s)
