"""The shipped liveness check at the door: real models, real faces, the upstream attack samples, as processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edge.checks import liveness_model_names
from edge.config import default_config, load_config

from .conftest import MODELS, ROOT

SAMPLES = ROOT.parent / "shared" / "models" / "minifasnet" / "samples"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/models/minifasnet is not present")
LIVENESS_BUNDLES = liveness_model_names(default_config())


def edge(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def hand_held(image: np.ndarray, count: int, seed: int = 0) -> list[np.ndarray]:
    """The same picture moved a little by hand between frames (shift, turn, scale), re-encoded like a camera's."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    frames = []
    for _ in range(count):
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-4, 4), rng.uniform(0.95, 1.05))
        matrix[:, 2] += rng.uniform(-12, 12, 2)
        moved = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
        frames.append(cv2.imdecode(cv2.imencode(".jpg", moved, [cv2.IMWRITE_JPEG_QUALITY, 88])[1], cv2.IMREAD_COLOR))
    return frames


def door_config(tmp_path, replay, models_dir=MODELS, **decision):
    """A unit whose camera replays ``replay`` and whose gallery holds the upstream real sample's person."""
    lines = [f'state_dir = "{tmp_path / "state"}"', f'models_dir = "{models_dir}"',
             "[camera]", 'source = "replay"', f'path = "{replay}"', "fps = 0.0",
             "[decision]", *(f"{k} = {json.dumps(v)}" for k, v in decision.items())]
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def enrolled(tmp_path):
    def make(replay_frames, **decision):
        replay = tmp_path / "replay"
        replay.mkdir(exist_ok=True)
        for i, frame in enumerate(replay_frames):
            cv2.imwrite(str(replay / f"{i:03d}.jpg"), frame)
        config = door_config(tmp_path, replay, **decision)
        # Enrollment from a photo file stays allowed: operators enroll from photos.
        added = edge("enroll", "files", "Upstream Sample", SAMPLES / "image_T1.jpg", "-c", config)
        assert added.returncode == 0, added.stderr
        return config
    return make


def test_edge_liveness_judges_the_upstream_samples(tmp_path):
    empty = ROOT / "edge" / "demo" / "replay" / "000_empty.jpg"
    result = edge("liveness", SAMPLES / "image_F1.jpg", SAMPLES / "image_F2.jpg", SAMPLES / "image_T1.jpg", empty)
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(p.rsplit("/", 1)[-1], verdict) for p, verdict, _ in lines] == [
        ("image_F1.jpg", "attack"), ("image_F2.jpg", "attack"), ("image_T1.jpg", "real")]
    scores = [float(score) for _, _, score in lines]
    assert scores[0] < 0.5 and scores[1] < 0.1 and scores[2] > 0.9
    assert result.returncode == 65 and "000_empty.jpg: no face found" in result.stderr


def test_a_phone_screen_of_an_enrolled_person_never_opens_the_door(enrolled):
    screen = cv2.imread(str(SAMPLES / "image_F2.jpg"))
    config = enrolled(hand_held(screen, 24))
    result = edge("run", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["outcome"] for d in decisions] == ["spoof"], decisions
    spoof = decisions[0]
    assert spoof["check"] == "liveness" and spoof["score"] < 0.5 and "photo or a screen" in spoof["reason"]
    with_no_check = edge("run", "-c", door_config(config.parent, config.parent / "replay", face_checks=""), "--json")
    outcomes = [json.loads(line)["outcome"] for line in with_no_check.stdout.splitlines()]
    assert "granted" in outcomes, "the screen matches the enrolled person: without the check it would open the door"
    audit = edge("events", "-c", config, "--kind", "spoof")
    assert audit.returncode == 0 and "spoof" in audit.stdout and "liveness" in audit.stdout, audit.stdout


def test_the_enrolled_person_in_person_is_let_in(enrolled):
    real = cv2.imread(str(SAMPLES / "image_T1.jpg"))
    config = enrolled(hand_held(real, 12, seed=1))
    result = edge("run", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    outcomes = [json.loads(line)["outcome"] for line in result.stdout.splitlines()]
    assert outcomes[:1] == ["granted"], outcomes


def test_a_tampered_liveness_bundle_stops_the_start(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("eval", "*.png"))
    bundle = models / LIVENESS_BUNDLES[0]
    model_file = next(p for p in bundle.iterdir() if p.suffix == ".tflite")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    config = door_config(tmp_path, ROOT / "edge" / "demo" / "replay", models_dir=models)
    for command in (["run"], ["check-config"]):
        result = edge(*command, "-c", config)
        assert result.returncode == 65, (command, result.stderr)
        assert "fails its integrity check" in result.stderr and "granted" not in result.stdout


def test_repeated_attacks_raise_an_alert(enrolled, tmp_path):
    screen = cv2.imread(str(SAMPLES / "image_F2.jpg"))
    empty = cv2.imread(str(ROOT / "edge" / "demo" / "replay" / "000_empty.jpg"))
    visits = []
    for seed in range(3):  # three attempts, the scene empty in between
        visits += hand_held(screen, 6, seed=seed) + [empty] * 6
    config = enrolled(visits)
    result = edge("run", "-c", config, "--json")
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    spoofs = [d for d in decisions if d["outcome"] == "spoof"]
    assert len(spoofs) == 3 and [d["alert"] for d in spoofs] == [False, False, True]
    assert not any(d["outcome"] == "granted" for d in decisions)


def test_live_enrollment_refuses_a_screen_through_the_control_socket(tmp_path, detector, embedder):
    """The person at the door hears, through edge enroll's socket, that a screen is not them."""
    from edge.checks import LivenessCheck
    from edge.enrollment.control import ControlClient, ControlServer
    from edge.pipeline import FrameResult, run_checks
    from edge.types import Frame

    import tempfile

    short = tempfile.mkdtemp(prefix="edge-", dir="/tmp")  # unix socket paths must stay short
    try:
        config_path = tmp_path / "edge.toml"
        config_path.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{MODELS}"\n'
                               f'[enrollment]\nsocket_path = "{short}/control.sock"\nmin_sample_interval = 0.0\n')
        config = load_config(config_path)
        check = LivenessCheck.from_config(config)
        server = ControlServer(config, embedder, lambda: 1.0).start()
        events = []
        client = threading.Thread(target=lambda: events.extend(ControlClient(server.path).connect().request(
            {"op": "enroll", "name": "Visitor", "samples": 1, "timeout": 3})))
        client.start()
        try:
            while server._active is None:
                time.sleep(0.05)
            for i, image in enumerate(hand_held(cv2.imread(str(SAMPLES / "image_F2.jpg")), 3)):
                frame = Frame(i, 100.0 + i, image, image, 1.0, "test")
                passed, refused = run_checks(frame, detector.detect_image(image), [check])
                assert not passed
                server.on_frame(FrameResult(frame, (), (), refused=tuple(refused)))
            client.join(60)  # the session times out: a screen never becomes a sample
        finally:
            server.stop()
    finally:
        shutil.rmtree(short, ignore_errors=True)
    reasons = [e["reasons"][0] for e in events if e["event"] == "rejected"]
    assert reasons and {r["code"] for r in reasons} == {"spoof"}
    assert "photo or a screen, not a live face" in reasons[0]["message"]


def test_two_stage_and_liveness_work_together(enrolled):
    """The cheap screen, the liveness check and the accurate confirmer: the screen never grants, the person does."""
    two_stage = {"confirm_threshold": 0.0, "threshold": 1.25}
    screen = cv2.imread(str(SAMPLES / "image_F2.jpg"))
    real = cv2.imread(str(SAMPLES / "image_T1.jpg"))
    empty = cv2.imread(str(ROOT / "edge" / "demo" / "replay" / "000_empty.jpg"))
    config = enrolled(hand_held(screen, 10) + [empty] * 6 + hand_held(real, 10, seed=3), **two_stage)
    text = config.read_text().replace("[decision]", '[embedder]\nmodel = "student-int8"\nconfirm_model = "sface-int8"\n'
                                                     "[decision]")
    config.write_text(text)
    # Enrollment must store both models' samples: enroll again under the two-stage config.
    (config.parent / "state").exists() and shutil.rmtree(config.parent / "state")
    added = edge("enroll", "files", "Upstream Sample", SAMPLES / "image_T1.jpg", "-c", config)
    assert added.returncode == 0, added.stderr
    result = edge("run", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    outcomes = [json.loads(line)["outcome"] for line in result.stdout.splitlines()]
    assert outcomes[0] == "spoof" and outcomes[-1] == "granted" and outcomes.count("granted") == 1, outcomes


def test_enrollment_from_a_photo_file_stays_allowed(tmp_path):
    """Operators enroll from photos: the liveness check is for the door camera, not for files."""
    config = door_config(tmp_path, ROOT / "edge" / "demo" / "replay")
    added = edge("enroll", "files", "Screen Person", SAMPLES / "image_F2.jpg", "-c", config)
    assert added.returncode == 0, added.stderr
    from edge.gallery import Gallery

    with Gallery(load_config(config).gallery_path()) as gallery:
        (person,) = gallery.people()
        assert person.name == "Screen Person" and person.samples == 1
        assert any(name == "Screen Person" for name in gallery.file_hashes().values())


def test_tuning_records_at_the_door_reports_and_writes_the_threshold(tmp_path):
    """record (replay camera standing in for the door's) -> report with BPCER/APCER -> --write into the config."""
    real_dir, attack_dir = tmp_path / "real", tmp_path / "screen"
    for folder, image in ((real_dir, "image_T1.jpg"), (attack_dir, "image_F2.jpg")):
        folder.mkdir()
        for i, frame in enumerate(hand_held(cv2.imread(str(SAMPLES / image)), 8, seed=5)):
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), frame)
    session = tmp_path / "door.jsonl"
    for label, folder in (("real", real_dir), ("screen", attack_dir)):
        config = door_config(tmp_path, folder)
        recorded = edge("liveness-tune", "record", "--label", label, "-o", session, "--frames", 8, "-c", config)
        assert recorded.returncode == 0, recorded.stderr
        assert f"{label}: 8 frames with a face" in recorded.stdout
    lines = [json.loads(line) for line in session.read_text().splitlines()]
    assert [row["label"] for row in lines] == ["real"] * 8 + ["screen"] * 8 and "image" not in lines[0]
    plot = tmp_path / "scores.png"
    report = edge("liveness-tune", "report", session, "--plot", plot, "--write", "-c", config)
    assert report.returncode == 0, report.stderr
    assert "APCER[screen] %" in report.stdout and "<- chosen" in report.stdout and plot.stat().st_size > 1000
    tuned = load_config(config).liveness
    assert 0.3 < tuned.threshold <= 1.0 and "8 real frames, screen 8 attack frames" in tuned.measured
    assert "BPCER 0.0 %" in tuned.measured and "APCER screen 0.0 %" in tuned.measured
    no_real = tmp_path / "attacks-only.jsonl"
    no_real.write_text("\n".join(line for line in session.read_text().splitlines() if '"screen"' in line) + "\n")
    refused = edge("liveness-tune", "report", no_real, "-c", config)
    assert refused.returncode == 65 and "no real-face presentations" in refused.stderr


def close_up(image: np.ndarray, fraction: float) -> np.ndarray:
    """The same frame as a camera would see the person with their face spanning ``fraction`` of its height."""
    from edge.detect import YuNetDetector
    from edge.bundle import load_bundle

    (face,) = YuNetDetector(load_bundle(MODELS / "yunet"), min_face_size=20).detect_image(image)
    x, y, w, h = face.box
    height, width = image.shape[:2]
    side_h = h / fraction
    side_w = side_h * width / height
    cx, cy = x + w / 2, y + h / 2
    matrix = np.float32([[width / side_w, 0, width / 2 - cx * width / side_w],
                         [0, height / side_h, height / 2 - cy * height / side_h]])
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def test_a_face_filling_the_frame_is_asked_to_step_back_and_let_in_from_further_away(enrolled):
    """Too close for the liveness crop to see around the face: refused (not a spoof), then granted normally."""
    real = cv2.imread(str(SAMPLES / "image_T1.jpg"))
    config = enrolled(hand_held(close_up(real, 0.85), 8, seed=2) + hand_held(real, 8, seed=4))
    result = edge("run", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["outcome"] for d in decisions] == ["refused", "granted"], decisions
    assert decisions[0]["check"] == "liveness" and "step back" in decisions[0]["reason"]
    assert decisions[0]["score"] is None


def test_edge_liveness_says_a_tight_portrait_cannot_be_judged(tmp_path):
    real = cv2.imread(str(SAMPLES / "image_T1.jpg"))
    tight = tmp_path / "tight.jpg"
    cv2.imwrite(str(tight), close_up(real, 0.9))
    result = edge("liveness", tight, SAMPLES / "image_T1.jpg")
    assert result.returncode == 65
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == ["real"]  # T1 still judged
    assert re.search(r"tight\.jpg: the face spans \d+% of the picture \(at most 66%\), too close to judge",
                     result.stderr), result.stderr
    assert "more of the scene around it" in result.stderr
