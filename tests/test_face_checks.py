"""The face-check stage: a face a check turns down is never embedded, never granted, and is reported."""

from __future__ import annotations

import numpy as np
import pytest

from edge.app import Recognizer
from edge.camera.replay import ReplaySource
from edge.checks import CHECKS, FaceCheck, build_checks
from edge.config import DEMO_DIR, config_from_dict
from edge.decide import Decider
from edge.errors import ConfigError
from edge.pipeline import run_checks
from edge.service.events import decision_event
from edge.types import Face, Frame, Match, Outcome, Verdict


class Everyone(FaceCheck):
    """Turns every face down (a stand-in for a liveness model that sees only photos)."""

    name = "everyone"

    def __init__(self):
        self.calls = 0

    def check(self, frame, faces):
        self.calls += 1
        return [Verdict(self.name, False, 0.1, "printed photo") for _ in faces]


class Nobody(FaceCheck):
    name = "nobody"

    def check(self, frame, faces):
        return [Verdict(self.name, True, 0.9) for _ in faces]


def face(x):
    return Face((x, 0.0, 50.0, 50.0), 0.9, np.zeros((5, 2), np.float32))


def frame():
    image = np.zeros((10, 10, 3), np.uint8)
    return Frame(0, 0.0, image, image)


def test_run_checks_splits_faces_and_keeps_the_first_failing_verdict():
    class LeftOnly(FaceCheck):
        name = "left-only"

        def check(self, frame, faces):
            return [Verdict(self.name, f.box[0] < 100, reason="right half") for f in faces]

    passed, refused = run_checks(frame(), [face(10), face(200)], [Nobody(), LeftOnly(), Everyone()])
    assert passed == [] and [(f.box[0], v.check) for f, v in refused] == [(200, "left-only"), (10, "everyone")]

    class Broken(FaceCheck):
        name = "broken"

        def check(self, frame, faces):
            return []

    with pytest.raises(ValueError, match="returned 0 verdicts for 1 faces"):
        run_checks(frame(), [face(1)], [Broken()])


def test_refused_faces_become_one_refused_decision_per_visit():
    d = Decider(frames_required=3, window_frames=5, window_seconds=10.0, cooldown_seconds=0.0)
    verdict = Verdict("liveness", False, 0.02, "screen")
    out = [d.update(i, i * 0.1, [], [verdict]) for i in range(6)]
    refused = [o for o in out if o is not None]
    assert len(refused) == 1 and refused[0].outcome is Outcome.REFUSED
    assert refused[0].check == "liveness" and refused[0].reason == "screen" and refused[0].frames == 3
    assert "refused check=liveness score=0.020 reason='screen' frames=3/3" in refused[0].describe()
    event = decision_event(refused[0]).as_dict()
    assert event["event_type"] == "refused" and event["check"] == "liveness" and event["reason"] == "screen"


def test_a_real_face_beside_a_refused_one_still_counts():
    d = Decider(frames_required=3, window_frames=5, window_seconds=10.0, cooldown_seconds=0.0)
    alice = Match(7, "alice", 0.5, 1.4, 0.9, 0.05)
    out = [d.update(i, i * 0.1, [alice], [Verdict("liveness", False)]) for i in range(3)]
    assert out[2] is not None and out[2].outcome is Outcome.GRANTED and out[2].name == "alice"


def run_demo(tmp_path, checks):
    config = config_from_dict({"state_dir": str(tmp_path / "state"), "demo": {"enroll": True},
                               "camera": {"fps": 0.0}})
    recognizer = Recognizer(config, source=ReplaySource(DEMO_DIR / "replay", fps=0.0), checks=checks)
    decisions = []
    try:
        recognizer.run(on_decision=decisions.append)
    finally:
        recognizer.close()
    return decisions


def test_the_demo_through_a_check_that_refuses_everyone_grants_no_one(tmp_path):
    check = Everyone()
    decisions = run_demo(tmp_path, [check])
    outcomes = [d.outcome for d in decisions]
    assert Outcome.GRANTED not in outcomes and Outcome.UNKNOWN not in outcomes
    assert outcomes.count(Outcome.REFUSED) == 3  # the two demo people and the stranger, once per visit
    assert all(d.check == "everyone" for d in decisions if d.outcome is Outcome.REFUSED) and check.calls > 0


def test_a_check_that_passes_everyone_changes_nothing(tmp_path):
    plain = [(d.outcome, d.name, d.frame_index) for d in run_demo(tmp_path / "a", [])]
    checked = [(d.outcome, d.name, d.frame_index) for d in run_demo(tmp_path / "b", [Nobody()])]
    assert checked == plain and (Outcome.GRANTED, "Emmanuel Macron", 8) in plain


def test_face_checks_are_chosen_by_name(monkeypatch):
    with pytest.raises(ConfigError, match="decision.face_checks: .no-such-check. not registered"):
        config_from_dict({"decision": {"face_checks": "no-such-check"}})
    monkeypatch.setitem(CHECKS._builtin, "everyone", f"{__name__}:Everyone")
    config = config_from_dict({"decision": {"face_checks": "everyone, "}})
    assert [type(c) for c in build_checks(config)] == [Everyone]
