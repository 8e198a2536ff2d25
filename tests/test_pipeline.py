"""The recognizer end to end on real models and real faces."""

import shutil

import cv2
import numpy as np
import pytest

from edge.app import Recognizer
from edge.camera.fake import FakeSource
from edge.config import config_from_dict, default_config
from edge.enrollment.store import enroll_files
from edge.errors import ModelError, ModelIntegrityError, ModelMismatchError, MultipleFacesError, NoFaceError
from edge.gallery import Gallery
from edge.images import load_image
from edge.types import Outcome

from .conftest import FIXTURES, MODELS


def test_same_person_closer_than_different_people(embedder, fixture_crops):
    names = sorted(fixture_crops)
    emb = dict(zip(names, embedder.embed([fixture_crops[n] for n in names])))
    d = lambda a, b: float(np.linalg.norm(emb[a] - emb[b]))  # noqa: E731
    genuine = [d("person_a_1", "person_a_2"), d("person_b_1", "person_b_2")]
    impostor = [d(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if a[:8] != b[:8] or "impostor" in a]
    assert max(genuine) < min(impostor), (genuine, sorted(impostor)[:3])
    for vector in emb.values():
        assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_embedder_batch_equals_single(embedder, fixture_crops):
    crops = list(fixture_crops.values())
    batch = embedder.embed(crops)
    single = np.stack([embedder.embed_one(c) for c in crops])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def run_demo(tmp_path, **overrides):
    config = config_from_dict({"state_dir": str(tmp_path / "state"), "demo": {"enroll": True},
                               "camera": {"source": "replay", "fps": 0.0}, **overrides})
    recognizer = Recognizer(config)
    decisions = []
    try:
        stats = recognizer.run(on_decision=decisions.append)
    finally:
        recognizer.close()
    return decisions, stats


def test_replay_demo_grants_enrolled_and_not_the_stranger(tmp_path):
    decisions, stats = run_demo(tmp_path)
    granted = [d.name for d in decisions if d.outcome is Outcome.GRANTED]
    unknown = [d for d in decisions if d.outcome is Outcome.UNKNOWN]
    assert granted == ["Emmanuel Macron", "Jacinda Ardern"]
    assert len(unknown) == 1 and 20 <= unknown[0].frame_index < 28  # the stranger's frames
    assert stats.frames == 48
    with Gallery(tmp_path / "state" / "gallery.db") as g:
        kinds = [e["kind"] for e in g.events(limit=100)]
        assert kinds.count("granted") == 2 and "unknown" in kinds


def test_gallery_reload_while_running(tmp_path, detector, embedder):
    frames = [load_image(FIXTURES / "person_b_2.jpg")] * 12
    config = config_from_dict({"state_dir": str(tmp_path / "state"), "gallery": {"reload_interval": 0.05},
                               "embedder": {"model": "sface-int8"},  # the model of the enrolling fixture
                               "decision": {"cooldown_seconds": 0.0}})
    recognizer = Recognizer(config, source=FakeSource(frames))
    decisions = []

    def enroll_midway(result, stats):
        if stats.frames == 4:
            with Gallery(config.gallery_path()) as other:  # as another process would
                enroll_files(other, detector, embedder, "Jacinda Ardern", [FIXTURES / "person_b_1.jpg"])
            import time

            time.sleep(0.1)

    try:
        recognizer.run(on_decision=decisions.append, on_frame=enroll_midway)
    finally:
        recognizer.close()
    outcomes = [(d.outcome, d.name) for d in decisions]
    assert outcomes[0] == (Outcome.UNKNOWN, None)
    assert (Outcome.GRANTED, "Jacinda Ardern") in outcomes


def test_gallery_enrolled_with_another_model_is_refused(tmp_path):
    config = config_from_dict({"state_dir": str(tmp_path / "state")})
    with Gallery(config.gallery_path()) as g:
        g.add_samples("someone", np.eye(1, 128, dtype=np.float32), "student-int8:0123456789abcdef")
    with pytest.raises(ModelMismatchError, match="student-int8:0123456789abcdef"):
        Recognizer(config, source=FakeSource([]))


def test_tampered_and_missing_models_are_refused(tmp_path):
    bundle = tmp_path / "sface-int8"
    shutil.copytree(MODELS / "sface-int8", bundle)
    model = next(p for p in bundle.iterdir() if p.suffix == ".tflite")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    config = config_from_dict({"state_dir": str(tmp_path / "state"), "embedder": {"model": str(bundle)}})
    with pytest.raises(ModelIntegrityError, match="fails its integrity check"):
        Recognizer(config, source=FakeSource([]))
    model.unlink()
    with pytest.raises(ModelError, match="is missing"):
        Recognizer(config, source=FakeSource([]))
    config = config_from_dict({"state_dir": str(tmp_path / "state"), "embedder": {"model": "no-such-model"}})
    with pytest.raises(ModelError, match="does not exist"):
        Recognizer(config, source=FakeSource([]))


def test_enrollment_refuses_no_face_and_several_faces(tmp_path, detector, embedder):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((480, 640, 3), 128, np.uint8))
    a = load_image(FIXTURES / "person_a_2.jpg")
    b = cv2.resize(load_image(FIXTURES / "impostor_1.jpg"), (a.shape[1], a.shape[0]))
    pair = tmp_path / "two.jpg"
    cv2.imwrite(str(pair), np.hstack([a, b]))
    with Gallery(tmp_path / "g.db") as g:
        with pytest.raises(NoFaceError, match="no face"):
            enroll_files(g, detector, embedder, "x", [FIXTURES / "person_a_1.jpg", blank])
        with pytest.raises(MultipleFacesError, match="2 faces"):
            enroll_files(g, detector, embedder, "x", [pair])
        assert g.people() == []  # all or nothing: the good first file was not stored either


def test_default_config_uses_demo_replay():
    config = default_config()
    assert config.camera.source == "replay" and config.demo.enroll
    assert config.camera_path().endswith("edge/demo/replay")


def test_min_face_size_is_in_main_stream_pixels(detector):
    from edge.camera.base import make_lores
    from edge.detect import YuNetDetector
    from edge.types import Frame

    face = load_image(FIXTURES / "person_a_2.jpg")
    canvas = np.full((480, 640, 3), 120, np.uint8)
    small = cv2.resize(face, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)  # face box ~60 px
    canvas[100 : 100 + small.shape[0], 200 : 200 + small.shape[1]] = small
    lores, scale = make_lores(canvas, 320)
    frame = Frame(0, 0.0, canvas, lores, scale)
    found = detector.detect(frame)
    assert len(found) == 1
    size = found[0].size  # main pixels
    loose = YuNetDetector(detector.bundle, min_face_size=int(size) - 5)
    strict = YuNetDetector(detector.bundle, min_face_size=int(size) + 5)
    assert len(loose.detect(frame)) == 1 and strict.detect(frame) == []


def test_a_failing_audit_write_does_not_stop_the_door(tmp_path, monkeypatch, caplog):
    from edge.errors import GalleryError

    config = config_from_dict({"state_dir": str(tmp_path / "state"), "demo": {"enroll": True},
                               "camera": {"source": "replay", "fps": 0.0}})
    recognizer = Recognizer(config)

    def disk_full(*args, **kwargs):
        raise GalleryError("gallery: the disk is full; nothing was written")

    monkeypatch.setattr(recognizer.gallery, "log_event", disk_full)
    decisions = []
    try:
        recognizer.run(on_decision=decisions.append)
    finally:
        recognizer.close()
    assert [d.name for d in decisions if d.outcome is Outcome.GRANTED] == ["Emmanuel Macron", "Jacinda Ardern"]
    assert "not written to the audit table" in caplog.text
