"""``edge-model bench``: latency of TFLite bundles per runtime, thread count and batch size.

Times ``interpreter.invoke()`` alone (input already set) after warm-up runs,
with each installed runtime (ai-edge-litert, tflite-runtime), through the
same :func:`edge.runtime.load_interpreter` the device uses (XNNPACK on).
Also reports file size, MACs and parameters (:mod:`edge_model.macs`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import click
import numpy as np

from edge.bundle import load_bundle
from edge.cli import boundary
from edge.errors import EdgeError, ModelError, RuntimeShimError
from edge.runtime import available_runtimes, load_interpreter

from .macs import count_tflite, human


def _model_path(target: Path) -> tuple[str, Path]:
    if target.is_dir():
        bundle = load_bundle(target)
        return bundle.name, bundle.model_path
    if target.is_file() and target.suffix == ".tflite":
        return target.stem, target
    raise ModelError(f"{target} is neither a bundle folder nor a .tflite file")


def _random_input(detail: dict, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.uniform(0, 255, size=shape).astype(dtype)


def time_model(model_path: Path, runtime: str, threads: int, batch: int, runs: int, warmup: int,
               seed: int = 0) -> dict:
    """Median / p90 latency in ms of one invoke at ``batch``; None fields when the batch cannot be set."""
    interpreter, name = load_interpreter(model_path, threads, runtime)
    detail = interpreter.get_input_details()[0]
    shape = [int(v) for v in detail["shape"]]
    if shape[0] != batch:
        shape[0] = batch
        try:
            interpreter.resize_tensor_input(detail["index"], shape, strict=False)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            return {"runtime": name, "threads": threads, "batch": batch, "error": f"cannot resize: {exc}"}
        detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], _random_input(detail, shape, np.random.default_rng(seed)))
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    times_arr = np.asarray(times)
    median = float(np.median(times_arr))
    return {
        "runtime": name,
        "threads": threads,
        "batch": batch,
        "runs": runs,
        "median_ms": round(median, 3),
        "p90_ms": round(float(np.percentile(times_arr, 90)), 3),
        "per_image_ms": round(median / batch, 3),
    }


def bench(targets: list[Path], runtimes: list[str] | None = None, threads: list[int] = (1, 2, 3, 4),
          batches: list[int] = (1, 16), runs: int = 30, warmup: int = 3, progress: bool = True) -> dict:
    from tqdm import tqdm

    runtimes = list(runtimes or available_runtimes())
    if not runtimes:
        raise RuntimeShimError("no TFLite runtime installed: pip install ai-edge-litert")
    models = []
    jobs = [(t, r, n, b) for t in targets for r in runtimes for n in threads for b in batches]
    bar = tqdm(total=len(jobs), desc="bench", unit="cfg", disable=not progress)
    for target in targets:
        name, path = _model_path(Path(target))
        counts = count_tflite(path)
        entry = {
            "model": name,
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "macs": counts["macs"],
            "params": counts["params"],
            "timings": [],
        }
        for runtime in runtimes:
            for n in threads:
                for b in batches:
                    # a batch-16 invoke costs ~16 batch-1 invokes: fewer repeats keep the total bounded
                    reps = runs if b == 1 else max(5, runs // 4)
                    try:
                        entry["timings"].append(time_model(path, runtime, n, b, reps, warmup))
                    except EdgeError as exc:
                        entry["timings"].append({"runtime": runtime, "threads": n, "batch": b, "error": str(exc)})
                    bar.update(1)
        models.append(entry)
    bar.close()
    return {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "numpy": np.__version__},
        "models": models,
    }


def format_table(result: dict) -> str:
    lines = []
    cpus = result["host"]["cpus"]
    for m in result["models"]:
        lines.append(
            f"{m['model']}: {m['size_bytes'] / 1e6:.2f} MB, {human(m['macs'])} MACs, {human(m['params'])} params"
        )
        lines.append(f"  {'runtime':<16}{'threads':>8}{'batch':>7}{'median ms':>11}{'p90 ms':>9}{'ms/img':>9}")
        for t in m["timings"]:
            if "error" in t:
                lines.append(f"  {t['runtime']:<16}{t['threads']:>8}{t['batch']:>7}  {t['error']}")
                continue
            lines.append(
                f"  {t['runtime']:<16}{t['threads']:>8}{t['batch']:>7}{t['median_ms']:>11.2f}{t['p90_ms']:>9.2f}"
                f"{t['per_image_ms']:>9.2f}"
            )
    lines.append(f"host: {result['host']['machine']}, {cpus} CPUs" +
                 (" (thread counts above the CPU count are oversubscribed)" if cpus and cpus < 4 else ""))
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: give integers like 1,2,4") from exc
    if not values or min(values) < 1:
        raise click.BadParameter("values must be >= 1")
    return values


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", "runtimes", multiple=True, help="Runtime(s) to time (default: every installed one).")
@click.option("--threads", default="1,2,3,4", show_default=True, help="Thread counts.")
@click.option("--batch", "batches", default="1,16", show_default=True, help="Batch sizes.")
@click.option("--runs", default=30, show_default=True, help="Timed invokes at batch 1 (a quarter at larger batches).")
@click.option("--warmup", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-progress", is_flag=True)
@boundary
def command(bundles, runtimes, threads, batches, runs, warmup, as_json, no_progress):
    """Latency (median, p90), size, MACs and parameters of BUNDLES (bundle folders or .tflite files)."""
    result = bench(list(bundles), list(runtimes) or None, _int_list(threads), _int_list(batches), runs, warmup,
                   progress=not no_progress and not as_json)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))
