"""Presentation attacks in the decision path: they never vote, block grants near them, become SPOOF, alert."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from edge.config import load_config, update_config_file
from edge.decide import AttackAlarm, Decider
from edge.errors import ConfigError, TuningError
from edge.liveness_tuning import (Presentation, choose_threshold, error_rates, plot_scores, read_presentations,
                                  split, write_presentations)
from edge.service.events import KINDS, decision_events
from edge.types import Match, Outcome, Verdict

ATTACK = Verdict("liveness", False, 0.05, "presentation attack", attack=True)


def accepted(person=1, name="Ada", distance=0.5):
    return Match(person, name, distance, 1.5, 1.0, 0.05)


def test_attack_frames_become_one_spoof_decision_per_visit():
    d = Decider(frames_required=3, window_frames=5, window_seconds=10.0, cooldown_seconds=0.0)
    out = [d.update(i, i * 0.1, [], [ATTACK]) for i in range(8)]
    decisions = [o for o in out if o is not None]
    assert [o.outcome for o in decisions] == [Outcome.SPOOF]
    spoof = decisions[0]
    assert spoof.check == "liveness" and spoof.score == pytest.approx(0.05) and spoof.frames == 3
    assert spoof.describe().startswith("spoof check=liveness score=0.050")


def test_an_attack_is_reported_as_spoof_even_beside_other_refusals():
    d = Decider(frames_required=2, window_frames=4, window_seconds=10.0)
    blurry = Verdict("sharpness", False, 0.1, "blurred")
    out = [d.update(i, i * 0.1, [], [blurry, ATTACK] if i % 2 else [blurry]) for i in range(4)]
    decisions = [o for o in out if o is not None]
    assert len(decisions) == 1 and decisions[0].outcome is Outcome.SPOOF


def test_a_photo_that_passes_in_a_few_lucky_frames_does_not_open_the_door():
    """k-of-n voting alone would grant on 3 'live' frames of 5; an attack frame in the window blocks it."""
    d = Decider(frames_required=3, window_frames=5, window_seconds=10.0, cooldown_seconds=0.0)
    pattern = [True, False, True, True, False, True, True]  # True: the photo scored as live and matched
    out = [d.update(i, i * 0.1, [accepted()] if live else [], [] if live else [ATTACK])
           for i, live in enumerate(pattern)]
    assert not any(o is not None and o.outcome is Outcome.GRANTED for o in out)


def test_a_real_face_grants_once_the_attack_frames_have_left_the_window():
    d = Decider(frames_required=3, window_frames=5, window_seconds=10.0, cooldown_seconds=0.0)
    d.update(0, 0.0, [], [ATTACK])
    out = [d.update(i, i * 0.1, [accepted()]) for i in range(1, 8)]
    granted = [o for o in out if o is not None and o.outcome is Outcome.GRANTED]
    assert len(granted) == 1 and granted[0].frame_index == 5  # frame 0 left the 5-frame window at frame 5


def test_an_attack_beside_an_accepted_face_blocks_the_grant():
    d = Decider(frames_required=2, window_frames=3, window_seconds=10.0)
    out = [d.update(i, i * 0.1, [accepted()], [ATTACK]) for i in range(5)]
    assert all(o is None for o in out)


def test_repeated_attacks_raise_one_alert_per_run():
    alarm = AttackAlarm(count=3, window_seconds=60.0)
    assert [alarm.observe(t) for t in (0, 10, 20, 30, 40, 50)] == [False, False, True, False, False, True]
    slow = AttackAlarm(count=3, window_seconds=60.0)
    assert not any(slow.observe(t) for t in (0, 50, 100, 150, 200))


def test_spoof_and_alert_are_registered_events_with_their_own_ids():
    assert KINDS["spoof"].home_assistant and KINDS["spoof_alert"].home_assistant
    assert KINDS["spoof_alert"].priority < KINDS["spoof"].priority  # more severe
    ids = [kind.message_id for kind in KINDS.values()]
    assert len(set(ids)) == len(ids)
    d = Decider(frames_required=1, window_frames=1)
    import dataclasses

    spoof = dataclasses.replace(d.update(0, 0.0, [], [ATTACK]), alert=True)
    events = decision_events(spoof)
    assert [e.kind for e in events] == ["spoof", "spoof_alert"]
    payload = events[0].as_dict()
    assert payload["event_type"] == "spoof" and payload["score"] == 0.05 and payload["alert"] is True
    assert events[1].journal_fields()["EDGE_CHECK"] == "liveness"


def presentations(real, **attacks):
    out = [Presentation("real", s) for s in real]
    for label, scores in attacks.items():
        out += [Presentation(label, s) for s in scores]
    return out


def test_error_rates_follow_iso_30107_3():
    real, attacks = split(presentations([0.9, 0.8, 0.3, 0.95], print=[0.1, 0.6], screen=[0.2, 0.2, 0.7, 0.1]))
    point = error_rates(real, attacks, 0.5)
    assert point.bpcer == 0.25  # one of four real frames below the threshold: turned away
    assert point.apcer == {"print": 0.5, "screen": 0.25} and point.max_apcer == 0.5


def test_the_chosen_threshold_is_the_highest_within_the_bpcer_target():
    rng = np.random.default_rng(0)
    real = rng.uniform(0.6, 1.0, 200).tolist() + [0.2, 0.3]  # two bad real frames: 1 %
    session = presentations(real, print=rng.uniform(0.0, 0.5, 100).tolist())
    strict = choose_threshold(session, bpcer_target=0.0)
    assert strict.bpcer == 0.0 and strict.threshold <= 0.2
    loose = choose_threshold(session, bpcer_target=0.02)
    assert loose.bpcer <= 0.02 and loose.threshold > 0.59 and loose.apcer["print"] == 0.0
    with pytest.raises(TuningError, match="no real-face presentations"):
        choose_threshold(presentations([], print=[0.1]))


def test_session_files_round_trip_and_refuse_garbage(tmp_path):
    path = tmp_path / "door.jsonl"
    write_presentations(path, presentations([0.9], screen=[0.1]))
    write_presentations(path, presentations([0.8]))
    assert [(p.label, p.score) for p in read_presentations([path])] == [("real", 0.9), ("screen", 0.1), ("real", 0.8)]
    path.write_text(path.read_text() + '{"label": "real", "score": NaN}\n')
    with pytest.raises(TuningError, match=":4:"):
        read_presentations([path])


def test_the_score_plot_is_a_png(tmp_path):
    import cv2

    session = presentations([0.9, 0.8, 0.7], print=[0.1, 0.2], screen=[0.3])
    out = plot_scores(session, choose_threshold(session), tmp_path / "scores.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape == (420, 800, 3) and (image < 250).any()


def test_update_config_file_keeps_comments_and_refuses_bad_values(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text("# the door by the garden\n[camera]\nsource = \"fake\"  # for now\n\n[liveness]\n"
                    "threshold = 0.5\n\n[door]\nsocket = \"\"\n")
    config = update_config_file(path, "liveness", {"threshold": 0.37, "measured": 'edge liveness-tune: 10 "real"'})
    text = path.read_text()
    assert "# the door by the garden" in text and 'source = "fake"  # for now' in text
    assert config.liveness.threshold == 0.37 and load_config(path).liveness.measured == 'edge liveness-tune: 10 "real"'
    assert tomllib.loads(text)["door"] == {"socket": ""}
    with pytest.raises(ConfigError, match="would not load"):
        update_config_file(path, "liveness", {"threshold": 1.5})
    assert load_config(path).liveness.threshold == 0.37  # unchanged
    fresh = tmp_path / "new.toml"
    fresh.write_text("[camera]\nsource = \"fake\"\n")
    update_config_file(fresh, "liveness", {"threshold": 0.6})
    assert tomllib.loads(fresh.read_text())["liveness"] == {"threshold": 0.6}


class _Ensemble:
    """Stands in for the models: a fixed score, and a record of which boxes it was asked about."""

    def __init__(self, score):
        self.score, self.asked = score, []

    def scores(self, image, boxes):
        self.asked.append(list(boxes))
        return np.full(len(boxes), self.score, np.float32)


def _face(box):
    from edge.types import Face

    return Face(box, 0.9, np.zeros((5, 2), np.float32))


def test_face_fraction_is_the_inverse_of_the_largest_crop_scale_that_fits():
    from edge.liveness import crop_box, face_fraction

    assert face_fraction(641, 481, (100, 100, 160, 120)) == pytest.approx(0.25)  # width 160/640, height 120/480
    assert face_fraction(641, 481, (0, 0, 400, 120)) == pytest.approx(0.625)  # the wider share counts
    # A 2x crop of a face spanning half the frame exactly fills it; a 3x crop is shrunk to that.
    assert crop_box(641, 481, (160, 120, 320, 240), 3.0) == crop_box(641, 481, (160, 120, 320, 240), 2.0)
    for bad in ((0, 0, 0, 10), (0, 0, float("nan"), 10)):
        with pytest.raises(ValueError):
            face_fraction(641, 481, bad)


def test_a_face_too_close_to_judge_is_refused_as_too_close_not_as_an_attack():
    from edge.checks import LivenessCheck
    from edge.types import Frame

    image = np.zeros((481, 641, 3), np.uint8)
    frame = Frame(0, 0.0, image, image)
    near, far = _face((100, 20, 300, 400)), _face((10, 10, 100, 100))  # 400/480 = 83 % of the height; 21 %
    ensemble = _Ensemble(0.05)
    check = LivenessCheck(ensemble, 0.3, max_face_fraction=0.66)
    close, attack = check.check(frame, [near, far])
    assert not close.passed and not close.attack and close.code == "too_close" and close.score is None
    assert "step back" in close.reason and "83%" in close.reason
    assert attack.attack and attack.code == "attack" and attack.score == pytest.approx(0.05)
    assert ensemble.asked == [[far.box]]  # the close face was never shown to the models
    check.reload(load_config_text("[liveness]\nmax_face_fraction = 0.9\n"))
    (judged,) = check.check(frame, [near])
    assert judged.attack and judged.score == pytest.approx(0.05)
    d = Decider(frames_required=2, window_frames=3, window_seconds=10.0)
    outcomes = [d.update(i, i * 0.1, [], [close]) for i in range(3)]
    refused = [o for o in outcomes if o is not None]
    assert [o.outcome for o in refused] == [Outcome.REFUSED] and "step back" in refused[0].reason


def load_config_text(text):
    from edge.config import config_from_dict

    return config_from_dict(tomllib.loads(text))


def test_live_enrollment_tells_a_person_too_close_to_step_back():
    from edge.enrollment.live import refusal_reason

    close = Verdict("liveness", False, None, "too close to the camera for the liveness check: step back",
                    code="too_close")
    reason = refusal_reason(close)
    assert reason.code == "too_close" and "step back" in reason.message
    assert refusal_reason(ATTACK).code == "spoof"


def test_eval_liveness_counts_a_face_too_close_as_unjudged_for_real_faces_and_refused_for_attacks():
    from edge_model.liveness_eval import Judged, _summary

    thresholds = np.array([0.0, 0.3, 1.0])
    judged = [Judged(0.1, 0.4, False), Judged(0.9, 0.5, False), Judged(0.1, 0.9, True), Judged(0.9, 0.95, True),
              None]
    real = _summary("real", judged, False, 0.3, thresholds)
    assert real["faces"] == 4 and real["too_close"] == 2 and real["images"] == 5
    assert real["BPCER"] == 0.5 and real["BPCER_judging_every_face"] == 0.5
    assert real["scores"] == [0.1, 0.9]
    attacks = _summary("attacks", judged, True, 0.3, thresholds)
    assert attacks["APCER"] == 0.25  # 1 of 4 faces let in: the 0.9 too close one is refused unjudged
    assert attacks["APCER_judging_every_face"] == 0.5
    assert [b["faces"] for b in attacks["by_fraction"]] == [2, 2]
    assert [b["fraction"] for b in attacks["by_fraction"]] == [[0.0, 0.5], [0.83, 1.0]]
