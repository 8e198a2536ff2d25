"""Door-service figures: face-appears -> relay-on latency, service RSS, idle and busy CPU.

    .venv/bin/python tools/bench_service.py [--runs 20] [--fps 10] [--seconds 10] [--embedder NAME ...] [--json]

* Latency: a real ``edge door`` process (gpiozero mock pins, its JSON-lines events log) and the recognizer
  service (:class:`edge.service.recognizer_service.RecognizerService`, the code ``edge serve`` runs) on the
  fake camera replaying ``--runs`` visits: 10 empty frames, then 8 frames of an enrolled person, at
  ``--fps``.  Per visit: the monotonic time the camera delivered the person's first frame to the
  actuator's "relay on" (CLOCK_MONOTONIC is shared by both processes).  With k=3 of n=5 frames
  the floor is two frame intervals.
* RSS and CPU: ``edge serve`` as a subprocess, sampled with psutil for ``--seconds``: idle (empty
  scene at --fps), busy (a face in every frame at --fps) and flat out (a face in every frame, fps 0).

Figures depend on this machine; compare rows with each other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REPLAY = ROOT / "edge" / "demo" / "replay"


def _toml(path: Path, sections: dict) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _env() -> dict:
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONPATH=str(ROOT))
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EDGE_CONFIG"):
        env.pop(key, None)
    return env


def _person_dir(work: Path, tag: str) -> Path:
    folder = work / tag
    folder.mkdir(exist_ok=True)
    for path in sorted(REPLAY.glob(f"*{tag}*")):
        shutil.copy(path, folder / path.name)
    return folder


def latency(work: Path, runs: int, fps: float, embedder: str) -> dict:
    from edge.service.recognizer_service import RecognizerService

    person = _person_dir(work, "person_a")
    door_sock = work / "door.sock"
    events_log = work / "door-events.jsonl"
    door_cfg = _toml(work / "door.toml", {"door": {"socket": str(door_sock), "recognizer_user": str(os.getuid()),
                                                   "pulse_seconds": 0.2, "max_unlocks_per_minute": 60,
                                                   "flood_requests": 1000, "events_log": str(events_log)}})
    actuator = subprocess.Popen([sys.executable, "-m", "edge.cli", "door", "-c", str(door_cfg)], env=_env(),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not door_sock.exists():
            time.sleep(0.02)
        script = work / "latency.script"
        visit = 10 + 8
        script.write_text("".join(f"blank 10\nimages {person}\n" for _ in range(runs)) + "end\n")
        config = _toml(work / "serve.toml", {
            "state_dir": str(work / "state"),
            "camera": {"source": "fake", "path": str(script), "fps": fps},
            # No threshold key: the bundle's own tuned one, as on a door.
            "decision": {"cooldown_seconds": 0.0},
            "embedder": {"model": embedder},
            "demo": {"enroll": True},
            "door": {"socket": str(door_sock), "recognizer_user": str(os.getuid())},
            "log_level": "warning",
        })
        os.environ["EDGE_STATE_DIR"] = str(work / "state")
        service = RecognizerService(config)
        appeared: dict[int, float] = {}

        deciding: dict[int, float] = {}

        def observe(result, stats):
            if result.frame.index % visit == 10:  # the first frame of a visit
                appeared[result.frame.index // visit] = result.frame.timestamp
            if result.frame.index % visit == 12:  # the third: with k=3 the earliest that can grant
                deciding[result.frame.index // visit] = result.frame.timestamp

        service.frame_observers.append(observe)
        granted: list[float] = []
        service.decision_observers.append(
            lambda d: granted.append(time.monotonic()) if d.outcome.value == "granted" else None)
        service.start()
        try:
            stats = service.run()
        finally:
            service.close()
        time.sleep(0.5)
        ons = [e["mono"] for e in map(json.loads, events_log.read_text().splitlines())
               if e.get("event_type") == "relay" and e.get("on")]
    finally:
        actuator.send_signal(signal.SIGTERM)
        actuator.wait(10)
    # decision_observers run after the unlock reply: relay on precedes them, so pair each grant with the
    # last relay-on before it (the unlock request/reply round trip bounds this from above).
    ipc = [min((g - t for t in ons if t <= g), default=None) for g in granted]
    ipc = [x for x in ipc if x is not None]
    samples, pipeline = [], []
    for run, t_face in sorted(appeared.items()):
        after = [t for t in ons if t >= t_face and (run + 1 not in appeared or t < appeared[run + 1])]
        if after:
            samples.append(after[0] - t_face)
            if run in deciding and after[0] >= deciding[run]:
                pipeline.append(after[0] - deciding[run])
    return {"runs": runs, "unlocked": len(samples), "fps": fps, "median_s": statistics.median(samples),
            "min_s": min(samples), "max_s": max(samples), "frames": stats.frames if stats else 0,
            "relay_on_to_grant_logged_median_s": statistics.median(ipc) if ipc else None,
            "third_face_frame_to_relay_on_median_s": statistics.median(pipeline) if pipeline else None,
            "granted_on_third_face_frame": len(pipeline)}


def resources(work: Path, script_text: str, fps: float, seconds: float, embedder: str) -> dict:
    import psutil

    script = work / f"res-{fps}-{abs(hash(script_text))}.script"
    script.write_text(script_text)
    config = _toml(work / "res.toml", {
        "state_dir": str(work / "state"),
        "camera": {"source": "fake", "path": str(script), "fps": fps},
        "embedder": {"model": embedder},
        "demo": {"enroll": True},
        "door": {"socket": ""},
        "log_level": "warning",
    })
    notify = work / "notify.sock"
    import socket as _socket

    if notify.exists():
        notify.unlink()
    receiver = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    receiver.bind(str(notify))
    ready = threading.Event()

    def drain():
        receiver.settimeout(0.5)
        while True:
            try:
                if b"READY=1" in receiver.recv(65536):
                    ready.set()
            except _socket.timeout:
                continue
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(config)],
                            env=dict(_env(), NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="10000000"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        ready.wait(120)
        ready_s = time.monotonic() - started
        p = psutil.Process(proc.pid)
        time.sleep(1.0)  # settle
        cpu0, t0 = p.cpu_times(), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            rss.append(p.memory_info().rss)
            time.sleep(0.25)
        cpu1, t1 = p.cpu_times(), time.monotonic()
        busy = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)
        return {"ready_s": round(ready_s, 2), "cpu_percent_of_one_core": round(100 * busy, 1),
                "rss_mib": round(max(rss) / 2**20, 1)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        receiver.close()


@click.command()
@click.option("--runs", default=20, show_default=True)
@click.option("--fps", default=10.0, show_default=True, help="camera frame rate for the latency and busy/idle runs")
@click.option("--seconds", default=10.0, show_default=True, help="sampling time for RSS/CPU")
@click.option("--embedder", "embedders", multiple=True,
              help="Embedder bundle(s) to compare in this one run (default: the configured default).")
@click.option("--json", "as_json", is_flag=True)
def main(runs, fps, seconds, embedders, as_json):
    from edge.config import default_config

    embedders = embedders or (default_config().embedder.model,)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-service-"))
    work.chmod(0o755)
    results = {}
    try:
        for embedder in embedders:
            folder = work / embedder.replace("/", "_")  # its own state: the demo gallery is enrolled per model
            folder.mkdir()
            folder.chmod(0o755)
            person = _person_dir(folder, "person_a")
            results[embedder] = {
                "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
                "latency": latency(folder, runs, fps, embedder),
                "idle": resources(folder, "blank 100000\n", fps, seconds, embedder),
                "busy": resources(folder, f"images {person} 20000\n", fps, seconds, embedder),
                "flat_out": resources(folder, f"images {person} 20000\n", 0.0, seconds, embedder),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else next(iter(results.values())), indent=2))
        return
    for embedder, figures in results.items():
        click.echo(f"== embedder {embedder}")
        _print(figures, fps)


def _print(figures: dict, fps: float) -> None:
    lat = figures["latency"]
    click.echo(f"machine: {figures['machine']}")
    click.echo(f"face appears -> relay on, {lat['unlocked']}/{lat['runs']} visits at {lat['fps']:g} fps: "
               f"median {lat['median_s'] * 1000:.0f} ms (min {lat['min_s'] * 1000:.0f}, max {lat['max_s'] * 1000:.0f})")
    if lat["third_face_frame_to_relay_on_median_s"] is not None:
        click.echo(f"  third face frame read -> relay on (one frame through the pipeline + unlock round trip): "
                   f"median {lat['third_face_frame_to_relay_on_median_s'] * 1000:.0f} ms "
                   f"({lat['granted_on_third_face_frame']} visits)")
    if lat["relay_on_to_grant_logged_median_s"] is not None:
        click.echo(f"  relay on -> unlock reply handled in the recognizer: median "
                   f"{lat['relay_on_to_grant_logged_median_s'] * 1000:.1f} ms")
    for name, label in (("idle", f"idle (empty scene, {fps:g} fps)"), ("busy", f"busy (a face every frame, {fps:g} fps)"),
                        ("flat_out", "flat out (a face every frame, unpaced)")):
        r = figures[name]
        click.echo(f"{label}: CPU {r['cpu_percent_of_one_core']:.1f}% of one core, RSS {r['rss_mib']:.0f} MiB, "
                   f"READY after {r['ready_s']:.1f} s")


if __name__ == "__main__":
    main()
