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
