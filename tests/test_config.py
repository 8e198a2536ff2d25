import tomllib

import pytest

from edge.config import config_from_dict, default_config, load_config, to_toml
from edge.errors import ConfigError


def test_default_round_trips_through_toml():
    config = default_config()
    again = config_from_dict(tomllib.loads(to_toml(config)))
    assert to_toml(again) == to_toml(config)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"camera": {"sorce": "replay"}}, "unknown config key 'sorce' in [camera]"),
        ({"treshold": 1.0}, "unknown config key 'treshold'"),
        ({"decision": {"threshold": 2.5}}, "decision.threshold: 2.5 is out of range"),
        ({"decision": {"threshold": -0.1}}, "out of range"),
        ({"decision": {"frames_required": "3"}}, "expected an integer"),
        ({"decision": {"frames_required": 6, "window_frames": 5}}, "cannot exceed"),
        ({"camera": {"source": "webcam"}}, "not one of"),
        ({"camera": {"loop": 1}}, "expected true or false"),
        ({"embedder": {"threads": 0}}, "out of range"),
        ({"camera": "replay"}, "expected a table"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera\nsource = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[decision]\nthreshhold = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown.toml: unknown config key 'threshhold'"):
        load_config(unknown)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('state_dir = "state"\n[embedder]\nmodel = "./bundles/x"\n')
    config = load_config(path)
    assert config.resolved_state_dir() == tmp_path / "state"
    assert config.model_path(config.embedder.model) == tmp_path / "bundles" / "x"
    assert config.gallery_path() == tmp_path / "state" / "gallery.db"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"door": {"pulse_seconds": 0}}, r"door.pulse_seconds: 0.0 is out of range \[0.2, 30.0\]"),
        ({"door": {"pulse_seconds": 31}}, "door.pulse_seconds: 31.0 is out of range"),
        ({"door": {"relay_pin": 60}}, "door.relay_pin: 60 is out of range"),
        ({"door": {"relay_pin": "GPIO17"}}, "door.relay_pin: expected an integer"),
        ({"door": {"active_high": "yes"}}, "door.active_high: expected true or false"),
        ({"door": {"contact_pin": 17}}, "door.contact_pin: GPIO17 is already door.relay_pin"),
        ({"door": {"max_unlocks_per_minute": 0}}, "door.max_unlocks_per_minute: 0 is out of range"),
        ({"door": {"flood_requests": 1}}, "door.flood_requests: 1 is out of range"),
        ({"door": {"lockout_seconds": 0.5}}, "door.lockout_seconds: 0.5 is out of range"),
        ({"door": {"recognizer_user": "root; rm -rf /"}}, "door.recognizer_user: .* is not a user name"),
        ({"door": {"recognizer_user": ""}}, "door.recognizer_user"),
        ({"door": {"socket": "/run/" + "x" * 120}}, "door.socket: .* longer than 107 bytes"),
        ({"door": {"socket": "@door"}}, "door.socket: abstract sockets"),
        ({"door": {"pulse": 3}}, r"unknown config key 'pulse' in \[door\]"),
        ({"events": {"webhook_url": "ftp://example.invalid/x"}}, "events.webhook_url: .* is not an http"),
        ({"events": {"webhook_url": "http://"}}, "events.webhook_url"),
        ({"events": {"webhook_timeout": 0}}, "events.webhook_timeout: 0.0 is out of range"),
        ({"events": {"mqtt_port": 70000}}, "events.mqtt_port: 70000 is out of range"),
        ({"events": {"mqtt_host": "mqtt://broker"}}, "events.mqtt_host: .* is not a host name"),
        ({"events": {"mqtt_topic_prefix": "edge/#"}}, "events.mqtt_topic_prefix: .* must not contain"),
        ({"events": {"mqtt_topic_prefix": ""}}, "events.mqtt_topic_prefix: must not be empty"),
        ({"events": {"mqtt_discovery_prefix": "/ha"}}, "events.mqtt_discovery_prefix"),
        ({"events": {"mqtt_node_id": "front door"}}, "events.mqtt_node_id: .* may only hold"),
        ({"events": {"queue_size": 0}}, "events.queue_size: 0 is out of range"),
        ({"events": {"mqtt": True}}, r"unknown config key 'mqtt' in \[events\]"),
    ],
)
def test_bad_door_and_events_values_are_rejected(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_door_and_events_defaults_are_safe():
    config = default_config()
    assert config.door.pulse_seconds == 3.0 and config.door.active_high is True and config.door.contact_pin == -1
    assert config.events.webhook_url == "" and config.events.mqtt_host == ""  # sinks off by default
    ok = config_from_dict({"door": {"recognizer_user": "1000", "contact_pin": 27, "active_high": False},
                           "events": {"webhook_url": "https://127.0.0.1:8443/hook", "mqtt_host": "127.0.0.1"}})
    assert ok.door.recognizer_user == "1000" and ok.events.mqtt_port == 1883


def test_enrollment_section_defaults_bounds_and_cross_check():
    config = default_config()
    assert config.enrollment.min_face_px == 64 and config.enrollment.socket_path == ""
    assert config_from_dict({"enrollment": {"samples": 8, "socket_group": "edge"}}).enrollment.samples == 8
    with pytest.raises(ConfigError, match="enrollment.samples: 0 is out of range"):
        config_from_dict({"enrollment": {"samples": 0}})
    with pytest.raises(ConfigError, match="unknown config key 'min_sharpnes' in \\[enrollment\\]"):
        config_from_dict({"enrollment": {"min_sharpnes": 10}})
    with pytest.raises(ConfigError, match="min_brightness .* must be below"):
        config_from_dict({"enrollment": {"min_brightness": 200.0, "max_brightness": 100.0}})
