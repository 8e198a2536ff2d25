"""Gallery sync figures: convergence of N people across 3 units, bytes per person, RSS, broker down.

Starts mosquitto on 127.0.0.1 and a free port, three ``edge sync`` processes (units a, b, c, one gallery
each), inserts N synthetic people (random unit-norm 128-D float32 embeddings under unit a's model id,
through Gallery methods, not the detector) into a's gallery, and measures the time until b and c hold
all of them.  Then the broker is killed for --down-seconds while a enrolls more and b keeps matching on
its local gallery, and the time to converge after the restart is measured.

    .venv/bin/python tools/bench_sync.py --people 1000 --down-seconds 60 --json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge.config import load_config  # noqa: E402
from edge.gallery import Gallery  # noqa: E402
from edge.sync.service import model_ids  # noqa: E402
from tests.sync_helpers import Broker, Unit, mosquitto_binary, wait_for, write_site_keys  # noqa: E402


def count(unit: Unit) -> int:
    if not unit.gallery_path.exists():
        return 0
    conn = sqlite3.connect(f"file:{unit.gallery_path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM people").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def enroll_synthetic(unit: Unit, model_id: str, names: list[str], rng) -> None:
    with Gallery(unit.gallery_path) as gallery, gallery.transaction():
        for name in names:
            vector = rng.normal(size=128).astype(np.float32)
            gallery.add_samples(name, vector / np.linalg.norm(vector), model_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--down-seconds", type=float, default=60.0)
    parser.add_argument("--down-people", type=int, default=50, help="enrolled on a while the broker is down")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if mosquitto_binary() is None:
        sys.exit("bench_sync: mosquitto is not installed (apt install mosquitto)")
    rng = np.random.default_rng(0)
    figures: dict = {"people": args.people}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker").start()
        units = [Unit(root, name, broker.port, poll=0.2) for name in "abc"]
        write_site_keys(units)
        a, b, c = units
        try:
            for unit in units:
                unit.start()
            wait_for(lambda: all(u.status().get("connected") for u in units), 60, "units connected")
            model_id, _ = model_ids(load_config(a.config))
            start = time.monotonic()
            enroll_synthetic(a, model_id, [f"person {i:05d}" for i in range(args.people)], rng)
            enrolled = time.monotonic()
            wait_for(lambda: count(b) >= args.people and count(c) >= args.people, 600, "b and c to converge", 0.05)
            figures["enroll_seconds"] = round(enrolled - start, 2)
            figures["converge_seconds"] = round(time.monotonic() - enrolled, 2)
            wait_for(lambda: b.status().get("received", 0) >= args.people, 30, "b's status")
            status = b.status()
            figures["bytes_per_person"] = round(status["bytes_received"] / status["received"])
            figures["rss_mib"] = {u.name: round(u.rss_kib() / 1024, 1) for u in units}

            # Broker down: a keeps enrolling, b keeps matching on its own gallery.
            broker.kill()
            down_at = time.monotonic()
            enroll_synthetic(a, model_id, [f"offline {i:05d}" for i in range(args.down_people)], rng)
            latencies = []
            with Gallery(b.gallery_path, create=False) as gallery:
                while time.monotonic() - down_at < args.down_seconds:
                    t = time.perf_counter()
                    matrix = gallery.matrix(model_id)
                    probe = matrix.embeddings[len(latencies) % len(matrix.embeddings)]
                    int(np.argmin(np.linalg.norm(matrix.embeddings - probe, axis=1)))
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.1)
            alive = all(u.process.poll() is None for u in units)
            pending = a.status().get("pending")
            broker.start()
            back = time.monotonic()
            total = args.people + args.down_people
            wait_for(lambda: count(b) >= total and count(c) >= total, 600, "convergence after the outage", 0.05)
            figures["broker_down"] = {
                "seconds": args.down_seconds, "enrolled_on_a_meanwhile": args.down_people,
                "pending_on_a_while_down": pending, "sync_processes_alive": alive,
                "b_local_match_ms_p50": round(float(np.median(latencies)) * 1000, 2),
                "b_local_match_ms_max": round(max(latencies) * 1000, 2), "b_local_matches": len(latencies),
                "converge_after_restart_seconds": round(time.monotonic() - back, 2),
            }
            figures["rss_mib_end"] = {u.name: round(u.rss_kib() / 1024, 1) for u in units}
        finally:
            for unit in units:
                unit.stop()
            broker.stop()
    print(json.dumps(figures, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
