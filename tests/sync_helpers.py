"""A real mosquitto and real ``edge sync`` processes for the gallery-sync tests and tools/bench_sync.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
EDGE = str(Path(sys.executable).with_name("edge"))
SITE = "test-site"


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Broker:
    """mosquitto on 127.0.0.1 and a free port, anonymous, with a persistence folder that survives a restart."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {self.root / 'data'}/\nautosave_interval 1\n"
                             "max_queued_messages 100000\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        log = open(self.root / "mosquitto.log", "ab")
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                assert self.process.poll() is None, (self.root / "mosquitto.log").read_text()[-2000:]
                return False
        wait_for(up, 10, "mosquitto to listen")
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Unit:
    """One door: its own state folder, gallery, signing key and ``edge sync`` process."""

    def __init__(self, root: Path, name: str, port: int, poll: float = 0.1) -> None:
        self.name = name
        self.root = Path(root) / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = self.root / "signing.key"
        self.public = subprocess.run([EDGE, "sync", "keygen", "--unit", name, "--out", str(self.key)],
                                     capture_output=True, text=True, check=True).stdout.strip()
        self.config = self.root / "edge.toml"
        self.site_keys = Path(root) / "site-keys"
        self.config.write_text(
            f'state_dir = "{self.root / "state"}"\nmodels_dir = "{MODELS}"\nlog_level = "info"\n'
            "[decision]\nthreshold = 1.0\n[camera]\nsource = \"replay\"\nfps = 0.0\n"
            f'[fleet]\nbroker = "mqtt://127.0.0.1:{port}"\nsite = "{SITE}"\nunit = "{name}"\n'
            f'signing_key = "{self.key}"\nsite_keys = "{self.site_keys}"\npoll_interval = {poll}\n')
        self.process: subprocess.Popen | None = None
        self.log = self.root / "sync.log"

    @property
    def gallery_path(self) -> Path:
        return self.root / "state" / "gallery.db"

    def start(self) -> "Unit":
        handle = open(self.log, "ab")
        self.process = subprocess.Popen([EDGE, "sync", "-c", str(self.config)], stdout=handle, stderr=handle,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def edge(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([EDGE, *args, "-c", str(self.config)], capture_output=True, text=True,
                                timeout=300)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def people(self) -> dict[str, str]:
        """name -> uuid in this unit's gallery (read fresh)."""
        from edge.gallery import Gallery

        if not self.gallery_path.exists():
            return {}
        with Gallery(self.gallery_path, create=False) as gallery:
            return {p.name: p.uuid for p in gallery.people()}

    def status(self) -> dict:
        import json

        path = self.root / "state" / "sync-status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def write_site_keys(units: list[Unit]) -> None:
    units[0].site_keys.write_text("".join(u.public + "\n" for u in units))
