"""Per-stage latency of the recognizer on this machine, printed as a table (and --json).

    .venv/bin/python tools/bench_runtime.py [--embedder models/sface-int8] [--repeat 30]

Stages: JPEG decode of a 640x480 frame, YuNet at 320x240 and 640x480, alignment,
embedding of 1 face and of a batch of 16 (1 and 2 threads), the liveness check
of 1 face beside the embedder, one whole frame with and without it, matching one
embedding against 1,000 and 10,000 identities (5 samples each).  Medians and
p90 over ``--repeat`` runs after a warm-up; compare rows with each other, not
with another machine.  Also: process RSS and, with --startup, the wall time of
``edge run`` from process start to the first decision on the demo replay.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.align import align_face  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.detect import YuNetDetector  # noqa: E402
from edge.embedder import TFLiteEmbedder  # noqa: E402
from edge.gallery import Gallery  # noqa: E402
from edge.images import decode_image  # noqa: E402
from edge.matcher import Matcher  # noqa: E402
from edge.checks import LivenessCheck  # noqa: E402
from edge.config import default_config  # noqa: E402
from edge.pipeline import analyse_frame  # noqa: E402
from edge.types import Frame  # noqa: E402


def timeit(fn, repeat: int) -> dict:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))]}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gallery_of(size: int, dim: int, model_id: str, tmp: Path) -> Gallery:
    rng = np.random.default_rng(size)
    gallery = Gallery(tmp / f"bench-{size}.db")
    vectors = rng.standard_normal((size * 5, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with gallery.db.atomic():
        for i in range(size):
            gallery.add_samples(f"person {i:05d}", vectors[i * 5 : (i + 1) * 5], model_id)
    return gallery


def startup_to_first_decision(tmp: Path) -> float:
    """Seconds from starting ``edge run`` on the demo to its first printed decision."""
    env_state = tmp / "startup-state"
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env={**__import__("os").environ, "EDGE_STATE_DIR": str(env_state)},
    )
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    proc.kill()
    proc.wait()
    if not line:
        raise click.ClickException("edge run printed no decision")
    return elapsed


@click.command()
@click.option("--embedder", "embedder_path", default=str(ROOT / "models" / "sface-int8"), show_default=True)
@click.option("--repeat", default=30, show_default=True)
@click.option("--startup/--no-startup", default=True, help="Also time edge run to its first decision.")
@click.option("--json", "as_json", is_flag=True)
def main(embedder_path, repeat, startup, as_json):
    """Print per-stage median/p90 latency of the recognizer pipeline."""
    frame_path = ROOT / "edge" / "demo" / "replay" / "008_person_a_2.jpg"
    data = frame_path.read_bytes()
    frame = decode_image(data)
    detector = YuNetDetector(load_bundle(ROOT / "models" / "yunet"), min_face_size=20)
    bundle = load_bundle(embedder_path, expect_kind="embedder")
    rows = []
    rows.append(("decode 640x480 JPEG", timeit(lambda: decode_image(data), repeat)))
    small = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    rows.append(("detect 320x240", timeit(lambda: detector.detect_image(small), repeat)))
    rows.append(("detect 640x480", timeit(lambda: detector.detect_image(frame), repeat)))
    face = detector.detect_image(frame)[0]
    rows.append(("align 112x112", timeit(lambda: align_face(frame, face.landmarks), repeat)))
    crop = align_face(frame, face.landmarks)
    for threads in (1, 2):
        embedder = TFLiteEmbedder(bundle, threads=threads)
        rows.append((f"embed 1 face, {threads} thread(s)", timeit(lambda: embedder.embed([crop]), repeat)))
        batch = [crop] * 16
        result = timeit(lambda: embedder.embed(batch), max(5, repeat // 4))
        result["per_face_ms"] = result["median_ms"] / 16
        rows.append((f"embed batch 16, {threads} thread(s)", result))
    query = embedder.embed([crop])
    # Liveness beside the embedder, and what it adds to a whole frame (detect, check, align, embed, match).
    config = default_config()
    liveness = LivenessCheck.from_config(config)
    single = TFLiteEmbedder(bundle, threads=1)
    one_face = Frame(0, 0.0, frame, small, frame.shape[1] / small.shape[1])
    rows.append((f"liveness 1 face ({len(liveness.ensemble.models)} models, {config.liveness.threads} thread)",
                 timeit(lambda: liveness.check(one_face, [face]), repeat)))
    rows.append(("embed 1 face, 1 thread (same run)", timeit(lambda: single.embed([crop]), repeat)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gallery = gallery_of(100, single.embedding_size, single.model_id, tmp)
        matcher = Matcher(gallery, single.model_id, 1.0)
        for label, checks in (("no face check", []), ("liveness check", [liveness])):
            rows.append((f"frame loop, 1 face, {label}",
                         timeit(lambda: analyse_frame(one_face, detector, single, matcher, checks=checks), repeat)))
        gallery.close()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in (1000, 10000):
            gallery = gallery_of(size, embedder.embedding_size, embedder.model_id, tmp)
            matcher = Matcher(gallery, embedder.model_id, 1.0)
            rows.append((f"match vs {size:,} identities ({size * 5:,} samples)", timeit(lambda: matcher.match(query), repeat)))
            gallery.close()
        extra = {"rss_mb": round(rss_mb(), 1), "embedder": bundle.model_id, "runtime": embedder.runtime}
        if startup:
            extra["startup_to_first_decision_s"] = round(startup_to_first_decision(tmp), 2)
    if as_json:
        click.echo(json.dumps({"stages": {name: r for name, r in rows}, **extra}, indent=2))
        return
    click.echo(f"{'stage':<45} {'median ms':>10} {'p90 ms':>10}")
    for name, r in rows:
        tail = f"  ({r['per_face_ms']:.2f} ms/face)" if "per_face_ms" in r else ""
        click.echo(f"{name:<45} {r['median_ms']:>10.2f} {r['p90_ms']:>10.2f}{tail}")
    for key, value in extra.items():
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
