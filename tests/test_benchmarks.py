"""Every benchmark script gets a tiny run here, so none can rot unnoticed between measurements.

The figures themselves are not checked (times on a loaded CI machine mean
nothing); that each script runs to the end and prints its figures is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT, SHARED_FACES

SMOKE = {
    "tools/bench_service.py": ["--runs", "1", "--seconds", "0.5", "--json"],
    "tools/bench_runtime.py": ["--repeat", "1", "--no-startup", "--json"],
    "tools/bench_gallery_storage.py": ["--limit", "24"],
    "tools/bench_sync.py": ["--people", "20", "--down-seconds", "2", "--down-people", "3", "--json"],
    "tools/bench_student_step.py": ["--batch", "4", "--repeats", "2", "models/student-wide/control/stage-3.pt",
                                    "models/student-wide/checkpoints/stage-2.pt"],
}


def test_every_benchmark_script_has_a_smoke_run():
    scripts = {str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("bench_*.py")}
    assert scripts == set(SMOKE), "add a smoke run for each tools/bench_*.py to SMOKE"


def run(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "GPIOZERO_PIN_FACTORY": "mock"})


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_script_runs(script):
    if script.endswith("bench_gallery_storage.py") and not (SHARED_FACES / "train" / "celeba_wild").is_dir():
        pytest.skip("needs ../shared/faces/train/celeba_wild")
    if script.endswith("bench_student_step.py"):
        pytest.importorskip("torch")  # the model-building extra
    result = run([script, *SMOKE[script]])
    assert result.returncode == 0, result.stderr[-3000:]
    if "--json" in SMOKE[script]:
        figures = json.loads(result.stdout)
        if script.endswith("bench_service.py"):
            assert figures["latency"]["unlocked"] == 1 and figures["busy"]["rss_mib"] > 0
    elif script.endswith("bench_student_step.py"):
        assert len(result.stdout.strip().splitlines()) == sum(a.endswith(".pt") for a in SMOKE[script])
    else:
        assert result.stdout.strip()


@pytest.mark.slow
def test_edge_model_bench_runs():
    result = run(["-m", "edge_model.cli", "bench", "models/student-int8", "--threads", "1", "--batch", "1",
                  "--runs", "2", "--warmup", "1", "--json", "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)
