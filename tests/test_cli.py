"""``edge`` as a process: what an operator or systemd sees, exit statuses included."""

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import FIXTURES, MODELS, ROOT


def edge(*args, env=None, check=False):
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300, check=check,
    )


def write_config(tmp_path, text):
    path = tmp_path / "edge.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    return path


def test_demo_run_prints_decisions(tmp_path):
    result = edge("run", env={"EDGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    granted = [line for line in lines if line.startswith("granted")]
    assert len(granted) == 2
    assert "name=Emmanuel Macron" in granted[0] and "name=Jacinda Ardern" in granted[1]
    assert sum(line.startswith("unknown") for line in lines) == 1
    assert any(line.startswith("no_face") for line in lines)


@pytest.mark.parametrize(
    "toml, code, message",
    [
        ("[camera]\nsorce = 'replay'\n", 78, "unknown config key 'sorce'"),
        ("[decision]\nthreshold = 5.0\n", 78, "out of range"),
        ("[embedder]\nmodel = 'nothing-here'\n", 66, "does not exist"),
        ("[camera]\nsource = 'replay'\npath = '/nonexistent/frames'\n", 74, "does not exist"),
        ("[camera]\nsource = 'opencv'\npath = '/dev/video99'\nread_timeout = 0.5\n", 74, "could not be opened"),
    ],
)
def test_failures_exit_non_zero_with_a_reason(tmp_path, toml, code, message):
    result = edge("run", "-c", str(write_config(tmp_path, toml)))
    assert result.returncode == code, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "granted" not in result.stdout


def test_tampered_model_exit_status(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(MODELS / "sface-int8", bundle)
    model = next(p for p in bundle.iterdir() if p.suffix == ".tflite")
    with open(model, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    result = edge("run", "-c", str(write_config(tmp_path, f"[embedder]\nmodel = '{bundle}'\n")))
    assert result.returncode == 65 and "integrity check" in result.stderr


def test_enroll_files_list_remove_reembed(tmp_path):
    config = str(write_config(tmp_path, ""))
    added = edge("enroll", "files", "-c", config, "Jacinda Ardern", str(FIXTURES / "person_b_1.jpg"),
                 str(FIXTURES / "person_b_2.jpg"), "--keep-crops")
    assert added.returncode == 0, added.stderr
    listed = edge("enroll", "list", "-c", config)
    assert "Jacinda Ardern\tsamples=2" in listed.stdout
    again = edge("enroll", "reembed", "-c", config)
    assert again.returncode == 0 and "Jacinda Ardern: 0 sample(s)" in again.stdout  # already on this model
    removed = edge("enroll", "forget", "-c", config, "Jacinda Ardern")
    assert removed.returncode == 0 and "2 embeddings" in removed.stdout
    missing = edge("enroll", "remove", "-c", config, "Jacinda Ardern")
    assert missing.returncode == 67 and "no enrolled person" in missing.stderr


def test_check_config_prints_effective_config(tmp_path):
    result = edge("check-config", "-c", str(write_config(tmp_path, "[decision]\nmargin = 0.1\n")))
    assert result.returncode == 0
    assert "margin = 0.1" in result.stdout and "[camera]" in result.stdout
