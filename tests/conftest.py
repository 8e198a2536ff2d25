from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "faces"
MODELS = ROOT / "models"
SHARED_FACES = ROOT.parent / "shared" / "faces"

# Every test runs against fakes unless it asks otherwise, like GPIOZERO_PIN_FACTORY=mock.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("EDGE_CONFIG", raising=False)


@pytest.fixture(scope="session")
def detector():
    from edge.bundle import load_bundle
    from edge.detect import YuNetDetector

    return YuNetDetector(load_bundle(MODELS / "yunet"), min_face_size=20)


@pytest.fixture(scope="session")
def embedder():
    from edge.bundle import load_bundle
    from edge.embedder import TFLiteEmbedder

    return TFLiteEmbedder(load_bundle(MODELS / "sface-int8"), threads=2)


@pytest.fixture(scope="session")
def fixture_crops(detector):
    from edge.align import align_face
    from edge.images import load_image

    crops = {}
    for path in sorted(FIXTURES.glob("*.jpg")):
        image = load_image(path)
        face = detector.detect_image(image)[0]
        crops[path.stem] = align_face(image, face.landmarks)
    return crops


def requires_shared_faces():
    return pytest.mark.skipif(not SHARED_FACES.is_dir(), reason="../shared/faces is not present")
