"""``edge-model check-arm``: the bundle runs under qemu-aarch64 (Pi 4 / Pi 5) and gives x86's numbers.

The emulated run needs qemu-user-static (and, the first time, debootstrap and
network access to a Debian mirror and PyPI); it is skipped only when qemu is
missing.  First run about 1-2 minutes to build ``.cache/arm64``, later runs reuse it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edge_model import check_arm
from edge_model.cli import main

from .conftest import MODELS, ROOT

TINY = ROOT / "tests" / "fixtures" / "tiny-int8"
HAVE_QEMU = any(shutil.which(name) for name in ("qemu-aarch64-static", "qemu-aarch64"))
needs_qemu = pytest.mark.skipif(
    not HAVE_QEMU, reason="qemu-user-static is not installed (apt-get install qemu-user-static debootstrap)"
)


def _bundle():
    """The shipped SFace INT8 bundle when present, else the tiny INT8 fixture."""
    sface = MODELS / "sface-int8"
    return sface if (sface / "manifest.json").is_file() else TINY


def test_missing_qemu_says_what_to_install(monkeypatch):
    monkeypatch.setattr(check_arm.shutil, "which", lambda name: None)
    result = CliRunner().invoke(main, ["check-arm", str(TINY)])
    assert result.exit_code == 69
    assert "apt-get install qemu-user-static" in result.output


def test_profiles_are_consistent_pairs():
    pi4, pi5 = check_arm.PROFILES["pi4"], check_arm.PROFILES["pi5"]
    assert (pi4.qemu_cpu, pi4.part) == ("cortex-a72", "0xd08")
    assert (pi5.qemu_cpu, pi5.part) == ("cortex-a76", "0xd0b")
    assert "asimddp" not in pi4.features and "asimddp" in pi5.features
    text = pi5.cpuinfo()
    assert text.count("processor\t:") == 4 and "Raspberry Pi 5" in text and pi5.part in text


def test_prefix_holds_pi_cpuinfo_and_sys(tmp_path):
    root = tmp_path / "root"
    for name in ("usr/bin", "usr/lib", "usr/sbin", "etc"):
        (root / name).mkdir(parents=True)
    prefix = check_arm.make_prefix(tmp_path, root, check_arm.PROFILES["pi4"])
    assert "CPU part\t: 0xd08" in (prefix / "proc" / "cpuinfo").read_text()
    cpus = prefix / "sys" / "devices" / "system" / "cpu"
    assert (cpus / "possible").read_text().strip() == "0-3"
    assert (cpus / "cpu3" / "regs" / "identification" / "midr_el1").read_text().strip() == "0x00000000410fd083"
    assert (prefix / "lib").resolve() == (root / "usr" / "lib").resolve()


def test_compare_counts_int8_differences():
    raw = np.array([[1, -5, 7], [0, 0, 0]], np.int8)
    emb = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], np.float32)
    same = check_arm.compare({"raw": raw, "embeddings": emb}, {"raw": raw.copy(), "embeddings": emb.copy()})
    assert same["int8_max_diff"] == 0 and same["min_cosine"] == pytest.approx(1.0)
    off = raw.copy()
    off[0, 1] = -2
    moved = emb.copy()
    moved[1] = [0.0, 1.0, 0.0]
    diff = check_arm.compare({"raw": raw, "embeddings": emb}, {"raw": off, "embeddings": moved})
    assert diff["int8_max_diff"] == 3 and diff["differing_values"] == 1
    assert diff["min_cosine"] == pytest.approx(0.0)


def test_tflite_runtime_is_held_to_cosine_only():
    assert check_arm.rule_for("ai-edge-litert", None, None) == (0, 0.9999)
    assert check_arm.rule_for("tflite-runtime", None, None) == (None, 0.98)
    assert check_arm.rule_for("tflite-runtime", 0, 0.9999) == (0, 0.9999)


@pytest.mark.slow
@needs_qemu
def test_bundle_matches_x86_on_pi4_and_pi5():
    bundle = _bundle()
    result = CliRunner().invoke(main, ["check-arm", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"]
    rows = {(r["runtime"], r["cpu"]): r for r in report["results"]}
    assert set(rows) == {(rt, cpu) for rt in check_arm.RUNTIMES for cpu in ("pi4", "pi5")}
    for cpu in ("pi4", "pi5"):
        litert = rows[("ai-edge-litert", cpu)]
        assert litert["int8_max_diff"] == 0 and litert["float_max_diff"] == 0.0
        assert litert["arm"]["machine"] == "aarch64"
        # the emulated process read the Pi's /proc/cpuinfo, not the x86 host's
        assert litert["arm"]["cpuinfo"]["CPU part"] == check_arm.PROFILES[cpu].part
        assert litert["arm"]["cpuinfo"]["processors"] == 4
        assert rows[("tflite-runtime", cpu)]["min_cosine"] >= 0.98


@pytest.mark.slow
@needs_qemu
def test_check_catches_sme_corruption_on_qemu_max():
    """QEMU's ``max`` core advertises SME; XNNPACK's SME int8 kernels then give wrong numbers under qemu 7.2.

    Whatever the cause, the check must notice outputs that are not the x86 ones.
    """
    result = CliRunner().invoke(
        main, ["check-arm", str(_bundle()), "--cpu", "pi4", "--qemu-cpu", "max", "--runtime", "ai-edge-litert", "--json"]
    )
    report = json.loads(result.stdout)
    (row,) = report["results"]
    assert row["qemu_cpu"] == "max"
    if row["passed"]:
        pytest.skip("this qemu's max core did not corrupt XNNPACK int8 output (newer qemu?)")
    assert result.exit_code == 1
    assert row["error"] or row["int8_max_diff"] > 0
