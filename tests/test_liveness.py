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
