"""A config reload (SIGHUP) reaches every [decision] setting, both models' thresholds included."""

from __future__ import annotations

import dataclasses

import pytest

from edge.app import Recognizer
from edge.camera.fake import FakeSource
from edge.config import config_from_dict
from edge.errors import ModelError


def test_apply_decision_config_updates_both_matchers_and_the_decider(tmp_path):
    base = {"state_dir": str(tmp_path / "state"),
            "embedder": {"model": "student-int8", "confirm_model": "sface-int8"},
            "decision": {"threshold": 0.9}}
    recognizer = Recognizer(config_from_dict(base), source=FakeSource([]))
    try:
        assert recognizer.confirm_matcher.threshold == recognizer.confirmer.bundle.threshold
        history_before = recognizer.decider._history
        new = config_from_dict({**base, "decision": {
            "threshold": 0.8, "confirm_threshold": 1.0, "margin": 0.2, "frames_required": 4, "window_frames": 7,
            "window_seconds": 5.0, "cooldown_seconds": 30.0}})
        recognizer.apply_decision_config(new)
        assert recognizer.threshold == 0.8 and recognizer.matcher.threshold == 0.8
        assert recognizer.confirm_matcher.threshold == 1.0
        assert recognizer.matcher.margin == recognizer.confirm_matcher.margin == 0.2
        d = recognizer.decider
        assert (d.k, d.n, d.window_seconds, d.cooldown_seconds) == (4, 7, 5.0, 30.0)
        assert d._history.maxlen == 7 and d._history is not history_before
        assert recognizer.config.decision == new.decision
        # A reload that cannot be applied (no threshold for a model without a tuned one) changes nothing.
        broken = dataclasses.replace(new, decision=dataclasses.replace(new.decision, threshold=0.0, margin=0.5))
        with pytest.raises(ModelError, match="no tuned threshold"):
            recognizer.apply_decision_config(broken)
        assert recognizer.matcher.margin == 0.2 and recognizer.threshold == 0.8
    finally:
        recognizer.close()


def test_a_reload_applies_the_liveness_threshold_and_alert_settings(tmp_path):
    base = {"state_dir": str(tmp_path / "state")}
    recognizer = Recognizer(config_from_dict(base), source=FakeSource([]))
    try:
        (check,) = recognizer.checks
        assert check.name == "liveness" and check.threshold == 0.3
        new = config_from_dict({**base, "liveness": {"threshold": 0.42, "alert_attacks": 5,
                                                     "alert_window_seconds": 60.0}})
        recognizer.apply_decision_config(new)
        assert check.threshold == 0.42 and recognizer.config.liveness.threshold == 0.42
        assert (recognizer.alarm.count, recognizer.alarm.window_seconds) == (5, 60.0)
    finally:
        recognizer.close()
