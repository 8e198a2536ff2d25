"""Two-stage recognition: the student screens every frame, SFace confirms once before an unlock."""

import numpy as np
import pytest

from edge.app import Recognizer
from edge.camera.fake import FakeSource
from edge.config import config_from_dict
from edge.enrollment.store import enroll_files
from edge.errors import ConfigError, ModelMismatchError
from edge.gallery import Gallery
from edge.types import Outcome

from .conftest import FIXTURES


def two_stage_config(tmp_path, **decision):
    return config_from_dict({
        "state_dir": str(tmp_path / "state"), "demo": {"enroll": True}, "camera": {"source": "replay", "fps": 0.0},
        "embedder": {"model": "student-int8", "confirm_model": "sface-int8"},
        # a permissive screen: the accurate model is what guards the door
        "decision": {"threshold": 1.2, **decision},
    })


def run(config):
    recognizer = Recognizer(config)
    decisions = []
    try:
        recognizer.run(on_decision=decisions.append)
    finally:
        recognizer.close()
    return recognizer, decisions


def test_screen_then_confirm_grants_enrolled_people_only(tmp_path):
    recognizer, decisions = run(two_stage_config(tmp_path))
    assert [d.name for d in decisions if d.outcome is Outcome.GRANTED] == ["Emmanuel Macron", "Jacinda Ardern"]
    assert sum(d.outcome is Outcome.UNKNOWN for d in decisions) == 1
    with Gallery(tmp_path / "state" / "gallery.db") as g:
        models = g.model_counts()
        assert models == {recognizer.embedder.model_id: 2, recognizer.confirmer.model_id: 2}
        rows = g.db.execute("SELECT capture_id, COUNT(DISTINCT model_id) FROM samples GROUP BY capture_id").fetchall()
        assert all(count == 2 for _, count in rows)  # both embeddings kept per capture


def test_unconfirmed_grant_becomes_unknown_and_keeps_no_cooldown(tmp_path):
    # Macron's 2025 face is 0.94 from his 2014 photo under SFace, Ardern's 0.68: a 0.8 confirm threshold
    # lets the screen pass both but confirms only Ardern.
    recognizer, decisions = run(two_stage_config(tmp_path, confirm_threshold=0.8))
    outcomes = [(d.outcome, d.name) for d in decisions if d.outcome is not Outcome.NO_FACE]
    assert (Outcome.GRANTED, "Jacinda Ardern") in outcomes
    assert (Outcome.GRANTED, "Emmanuel Macron") not in outcomes
    rejected = [d for d in decisions if d.outcome is Outcome.UNKNOWN and d.model == recognizer.confirmer.model_id]
    assert rejected and rejected[0].distance > 0.8
    with Gallery(tmp_path / "state" / "gallery.db") as g:
        macron = g.person_id("Emmanuel Macron")
    assert macron not in recognizer.decider._last_grant  # revoked: the next visit is judged afresh


def test_confirm_model_must_differ(tmp_path):
    config = config_from_dict({"state_dir": str(tmp_path / "s"),
                               "embedder": {"model": "sface-int8", "confirm_model": "sface-int8"}})
    with pytest.raises(ConfigError, match="same model"):
        Recognizer(config, source=FakeSource([]))


def test_gallery_without_confirm_samples_is_refused(tmp_path, detector, embedder):
    config = two_stage_config(tmp_path)
    with Gallery(config.gallery_path()) as g:  # enrolled before two-stage was switched on
        enroll_files(g, detector, embedder, "Jacinda Ardern", [FIXTURES / "person_b_1.jpg"])
    config = config_from_dict({"state_dir": str(tmp_path / "state"),
                               "embedder": {"model": "sface-int8", "confirm_model": "student-int8"},
                               "decision": {"confirm_threshold": 1.0}})
    with pytest.raises(ModelMismatchError, match="student-int8"):
        Recognizer(config, source=FakeSource([np.zeros((480, 640, 3), np.uint8)]))


def test_bulk_enrollment_stores_both_models(tmp_path):
    from .test_cli import edge

    path = tmp_path / "edge.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[embedder]\nmodel = "student-int8"\n'
                    'confirm_model = "sface-int8"\n[decision]\nthreshold = 1.2\n')
    result = edge("enroll", "files", "-c", str(path), "Jacinda Ardern", str(FIXTURES / "person_b_1.jpg"),
                  str(FIXTURES / "person_b_2.jpg"))
    assert result.returncode == 0, result.stderr
    with Gallery(tmp_path / "state" / "gallery.db") as g:
        counts = sorted(g.model_counts().items())
    assert [m.split(":")[0] for m, _ in counts] == ["sface-int8-cal300-seed0", "student-int8-cal300-seed0"]
    assert [c for _, c in counts] == [2, 2]


def test_a_two_stage_export_imports_into_a_two_stage_and_a_single_model_unit(tmp_path):
    from .test_cli import edge

    def unit(name, confirm):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'state_dir = "{tmp_path / name}"\n[embedder]\nmodel = "student-int8"\n'
                        f'confirm_model = "{confirm}"\n[decision]\nthreshold = 1.2\n')
        return str(path)

    source, twin, single = unit("a", "sface-int8"), unit("b", "sface-int8"), unit("c", "")
    assert edge("enroll", "files", "-c", source, "Jacinda Ardern", str(FIXTURES / "person_b_1.jpg"),
                str(FIXTURES / "person_b_2.jpg"), "--keep-crops").returncode == 0
    export = tmp_path / "a.edge"
    assert edge("enroll", "export", "-c", source, str(export), "--crops").returncode == 0
    into_twin = edge("enroll", "import", "-c", twin, str(export))
    assert into_twin.returncode == 0, into_twin.stderr
    assert "4 samples, 2 crops" in into_twin.stdout
    into_single = edge("enroll", "import", "-c", single, str(export))
    assert into_single.returncode == 0, into_single.stderr
    assert "2 samples, 2 crops" in into_single.stdout and "left out 2 samples" in into_single.stderr
    with Gallery(tmp_path / "b" / "gallery.db") as b, Gallery(tmp_path / "a" / "gallery.db") as a:
        assert b.model_counts() == a.model_counts()
    with Gallery(tmp_path / "c" / "gallery.db") as c:
        assert [m.split(":")[0] for m in c.model_counts()] == ["student-int8-cal300-seed0"]
    # The same file again with --merge: every (capture, model) pair is already there.
    again = edge("enroll", "import", "-c", twin, str(export), "--merge")
    assert again.returncode == 0 and "4 samples already here" in again.stdout
    # A unit that runs SFace alone takes the SFace samples; one that runs neither model refuses the file.
    sface = tmp_path / "s.toml"
    sface.write_text(f'state_dir = "{tmp_path / "s"}"\n[embedder]\nmodel = "sface-int8"\n')
    assert "2 samples" in edge("enroll", "import", "-c", str(sface), str(export)).stdout
    other = tmp_path / "d.toml"
    other.write_text(f'state_dir = "{tmp_path / "d"}"\n[embedder]\nmodel = "{FIXTURES.parent / "tiny-int8"}"\n'
                     '[decision]\nthreshold = 1.0\n')
    refused = edge("enroll", "import", "-c", str(other), str(export))
    assert refused.returncode == 65 and "embeddings of different models cannot be compared" in refused.stderr
