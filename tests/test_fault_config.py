"""Fault injection, bad configs and tampered bundles: what a hostile tester or a clumsy operator tries.

Each case runs ``edge`` as a process, as systemd and an operator meet it, and
checks the exit status, that the message names the cause, and that nothing
was granted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge.bundle import load_bundle, read_manifest, write_manifest
from edge.config import Config, config_from_dict
from edge.errors import ConfigError

from .conftest import MODELS, ROOT
from .test_cli import edge, write_config


def float_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from float_keys(hint, f"{prefix}{f.name}.")
        elif hint is float:
            yield prefix + f.name


FLOAT_KEYS = sorted(float_keys())


def nested(key: str, value) -> dict:
    section, _, name = key.rpartition(".")
    return {section: {name: value}} if section else {name: value}


def test_every_float_key_is_known_to_the_suite():
    # Every float key of the config: a new one must not escape the non-finite checks below.
    for key in ["door.pulse_seconds", "decision.cooldown_seconds", "door.lockout_seconds", "decision.threshold",
                "decision.margin", "decision.window_seconds", "decision.confirm_threshold",
                "door.flood_window_seconds", "enrollment.min_sharpness", "camera.read_timeout"]:
        assert key in FLOAT_KEYS
    assert len(FLOAT_KEYS) >= 30


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_for_every_float_key(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: .* is not a finite number"):
        config_from_dict(nested(key, value))


@pytest.mark.parametrize("toml, key", [
    ("[door]\npulse_seconds = nan\n", "door.pulse_seconds"),
    ("[decision]\ncooldown_seconds = nan\n", "decision.cooldown_seconds"),
    ("[door]\nlockout_seconds = nan\n", "door.lockout_seconds"),
    ("[decision]\nthreshold = inf\n", "decision.threshold"),
    ("[camera]\nread_timeout = -inf\n", "camera.read_timeout"),
])
def test_check_config_and_the_services_refuse_nan(tmp_path, toml, key):
    config = write_config(tmp_path, toml)
    for command in (["check-config"], ["check-config", "--for", "door"], ["run"], ["door"], ["serve"]):
        result = edge(*command, "-c", str(config))
        assert result.returncode == 78, (command, result.stderr)
        assert f"{key}: " in result.stderr and "not a finite number" in result.stderr
        assert "granted" not in result.stdout


@pytest.mark.parametrize("table, key", [("", "log_level"), ("[door]\n", "recognizer_user"), ("[events]\n", "webhook_url")])
def test_a_huge_config_value_is_cut_in_the_message(tmp_path, table, key):
    path = tmp_path / "edge.toml"
    path.write_text(f'{table}{key} = "' + "x" * 50_000_000 + '"\n')
    result = edge("check-config", "-c", str(path))
    assert result.returncode == 78 and key in result.stderr
    assert "50,000,002 characters" in result.stderr and len(result.stderr) < 1000


# -- the manifest is part of the model ---------------------------------------------------------------
@pytest.fixture()
def models_copy(tmp_path):
    root = tmp_path / "models"
    for name in ("sface-int8", "yunet", "student-int8", "minifasnet-v2-fp16", "minifasnet-v1se-fp16"):
        shutil.copytree(MODELS / name, root / name)
    return root


def edit_manifest(bundle, change, reseal=False):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if reseal:
        write_manifest(bundle, manifest)
    else:
        path.write_text(json.dumps(manifest, indent=2))


def config_with(tmp_path, models, extra=""):
    # These tests tamper with the sface-int8 bundle, so they select it (the default embedder is EdgeFace).
    return write_config(tmp_path, f'models_dir = "{models}"\n[demo]\nenroll = true\n[embedder]\nmodel = "sface-int8"\n'
                                  f'[camera]\nsource = "replay"\nfps = 0.0\n{extra}')


def test_the_demo_stranger_is_unknown_with_the_shipped_manifest(tmp_path, models_copy):
    result = edge("run", "-c", str(config_with(tmp_path, models_copy)))
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("granted") for line in result.stdout.splitlines()) == 2
    assert any(line.startswith("unknown") for line in result.stdout.splitlines())


@pytest.mark.parametrize("change", [
    lambda m: m["threshold"].__setitem__("l2", 1.99),
    lambda m: m["input"].__setitem__("mean", [127.5, 127.5, 127.5]),
    lambda m: m["input"].__setitem__("color", "BGR"),
    lambda m: m.pop("manifest_sha256"),
], ids=["threshold", "mean", "color", "seal-removed"])
def test_an_edited_manifest_is_refused_at_start(tmp_path, models_copy, change):
    edit_manifest(models_copy / "sface-int8", change)
    config = config_with(tmp_path, models_copy)
    for command in ("run", "check-config", "serve"):
        result = edge(command, "-c", str(config))
        assert result.returncode == 65, (command, result.stderr)
        assert "manifest.json" in result.stderr and ("integrity check" in result.stderr or "seal" in result.stderr)
        assert "granted" not in result.stdout


def test_a_resealed_manifest_that_feeds_the_model_differently_never_meets_the_old_gallery(tmp_path, models_copy):
    config = config_with(tmp_path, models_copy)
    assert edge("run", "-c", str(config)).returncode == 0  # enrolls the demo gallery
    edit_manifest(models_copy / "sface-int8", lambda m: m["input"].__setitem__("std", [0.5, 0.5, 0.5]), reseal=True)
    for command in ("run", "check-config"):
        result = edge(command, "-c", str(config))
        assert result.returncode == 65, (command, result.stderr)
        assert "the gallery was enrolled with sface-int8-cal300-seed0:" in result.stderr
        assert "granted" not in result.stdout


def test_a_gallery_enrolled_under_the_legacy_model_id_migrates_without_re_enrollment(tmp_path, models_copy):
    config = config_with(tmp_path, models_copy)
    first = edge("run", "-c", str(config))
    bundle = load_bundle(models_copy / "sface-int8")
    gallery = tmp_path / "state" / "gallery.db"
    with sqlite3.connect(gallery) as db:  # what a gallery written before manifest sealing holds
        db.execute("UPDATE samples SET model_id = ?", [bundle.legacy_model_id])
    checked = edge("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    again = edge("run", "-c", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout  # same decisions, demo people not re-enrolled
    assert "demo gallery: enrolled" in first.stderr and "demo gallery: enrolled" not in again.stderr
    assert "2 samples of " + bundle.legacy_model_id + " now recorded as " + bundle.model_id in again.stderr
    with sqlite3.connect(gallery) as db:
        assert {r[0] for r in db.execute("SELECT DISTINCT model_id FROM samples")} == {bundle.model_id}


def test_a_threshold_override_outside_the_tuned_range_is_warned_about_loudly(tmp_path, models_copy):
    low, high = load_bundle(models_copy / "sface-int8").threshold_range
    assert low < high
    loose = edge("run", "-c", str(config_with(tmp_path, models_copy, f"[decision]\nthreshold = {high + 0.2}\n")))
    assert loose.returncode == 0 and "WARNING" in loose.stderr and "THRESHOLD OVERRIDE" in loose.stderr
    assert "impostors are accepted more often" in loose.stderr
    inside = edge("run", "-c", str(config_with(tmp_path, models_copy, f"[decision]\nthreshold = {(low + high) / 2}\n")))
    assert inside.returncode == 0 and "THRESHOLD OVERRIDE" not in inside.stderr


def test_a_non_finite_threshold_in_a_sealed_manifest_is_refused(tmp_path, models_copy):
    edit_manifest(models_copy / "sface-int8", lambda m: m["threshold"].__setitem__("l2", float("nan")), reseal=True)
    result = edge("run", "-c", str(config_with(tmp_path, models_copy)))
    assert result.returncode == 66 and "threshold.l2 nan is not an L2 distance" in result.stderr


# -- exit statuses ----------------------------------------------------------------------------------
def test_a_garbage_model_with_a_recomputed_sha_is_a_data_error(tmp_path, models_copy):
    bundle = models_copy / "sface-int8"
    model = bundle / read_manifest(bundle)["file"]
    model.write_bytes(b"\0garbage" * 4096)
    write_manifest(bundle, read_manifest(bundle))  # the attacker re-seals: sha256 and seal both match
    config = config_with(tmp_path, models_copy)
    for command in ("run", "check-config"):
        result = edge(command, "-c", str(config))
        assert result.returncode == 65, (command, result.returncode, result.stderr)
        assert "is not a model ai-edge-litert can load" in result.stderr and "no TFLite runtime" not in result.stderr


def test_edge_models_fails_when_the_selected_bundle_is_invalid(tmp_path, models_copy):
    config = config_with(tmp_path, models_copy)
    assert edge("models", "-c", str(config)).returncode == 0
    edit_manifest(models_copy / "sface-int8", lambda m: m["threshold"].__setitem__("l2", 1.99))
    result = edge("models", "-c", str(config))
    assert result.returncode == 65 and "INVALID" in result.stdout and "integrity check" in result.stderr
    # An invalid bundle that is not selected is listed, but does not fail the command.
    shutil.copytree(MODELS / "sface-int8", models_copy / "sface-int8", dirs_exist_ok=True)
    edit_manifest(models_copy / "student-int8", lambda m: m.__setitem__("version", "edited"))
    result = edge("models", "-c", str(config))
    assert result.returncode == 0 and "student-int8\t" in result.stdout and "INVALID" in result.stdout


# -- check-config checks what start-up needs ---------------------------------------------------------
@pytest.fixture(scope="module")
def fake_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("fake") / "camera.txt"
    path.write_text(f"images {ROOT / 'edge' / 'demo' / 'replay'} 1\nend\n")
    return path


START_FAILURES = [
    ("[embedder]\nmodel = 'no-such-bundle'\n", 66, "no-such-bundle does not exist"),
    ("[detector]\nmodel = 'no-such-bundle'\n", 66, "no-such-bundle does not exist"),
    ("[embedder]\nmodel = 'yunet'\n", 66, "is a detector, expected a embedder"),
    ("[detector]\nmodel = 'sface-int8'\n", 66, "is a embedder, expected a detector"),
    ("[embedder]\nmodel = './nowhere/bundle'\n", 66, "does not exist"),
    ("[embedder]\nmodel = 'student-int8'\n", 66, "no tuned threshold"),
    ("[embedder]\nconfirm_model = 'no-such-bundle'\n", 66, "does not exist"),
    ("[embedder]\nconfirm_model = 'edgeface-xxs-fp16'\n", 78, "two-stage needs a different"),
    ("[camera]\nsource = 'replay'\npath = '/nonexistent/frames'\n", 74, "does not exist"),
    ("[camera]\nsource = 'opencv'\npath = '/dev/video99'\n", 74, "/dev/video99 does not exist"),
    ("[camera]\nsource = 'opencv'\npath = '/etc/hostname-not-a-video'\n", 74, "neither a device"),
    ("[camera]\nsource = 'fake'\npath = '/nonexistent/script.txt'\n", 78, "fake camera script"),
    ("gallery = 1\n", 78, "gallery: expected a table"),
    ("state_dir = '/etc/hostname/state'\n", 73, "is not a folder"),
]
if __import__("importlib").util.find_spec("picamera2") is None:
    START_FAILURES.append(("[camera]\nsource = 'picamera2'\n", 74, "picamera2 is not importable"))


@pytest.mark.parametrize("toml, code, message", START_FAILURES)
def test_check_config_fails_where_start_up_would(tmp_path, toml, code, message):
    config = tmp_path / "edge.toml"
    config.write_text(toml if toml.startswith("state_dir") else f'state_dir = "{tmp_path / "state"}"\n{toml}')
    checked = edge("check-config", "-c", str(config))
    assert checked.returncode == code, (checked.returncode, checked.stderr)
    assert message in checked.stderr
    started = edge("run", "-c", str(config), "--max-frames", "3")
    assert started.returncode == code, (started.returncode, started.stderr)
    assert "granted" not in started.stdout


def test_check_config_passes_a_config_that_starts(tmp_path, fake_script):
    config = write_config(tmp_path, f"[camera]\nsource = 'fake'\npath = '{fake_script}'\n")
    checked = edge("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "check-config: ok: camera fake camera" in checked.stderr and "will be created" in checked.stderr
    assert not (tmp_path / "state" / "gallery.db").exists()  # checking creates nothing
    assert edge("run", "-c", str(config)).returncode == 0


# -- a newcomer's first screen, and [events] in edge run ---------------------------------------------
def test_edge_run_shows_each_decision_once(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edge.cli", "run"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300,
                            env={**__import__("os").environ, "EDGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("name=Emmanuel Macron") == 1 and result.stdout.count("name=Jacinda Ardern") == 1


def test_edge_run_publishes_decisions_to_the_configured_webhook(tmp_path):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = write_config(tmp_path, f"[demo]\nenroll = true\n[camera]\nfps = 0.0\n"
                                        f"[events]\nwebhook_url = 'http://127.0.0.1:{server.server_port}/hook'\n")
        result = edge("run", "-c", str(config))
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    granted = [e for e in received if e.get("event_type") == "granted"]
    assert [e["person"] for e in granted] == ["Emmanuel Macron", "Jacinda Ardern"]
