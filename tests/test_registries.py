"""Everything chosen by name resolves: camera backends, lazy CLI commands, service components, event kinds."""

from __future__ import annotations

import importlib
import inspect

import pytest

from edge.app import DETECTORS, EMBEDDERS
from edge.bundle import load_bundle
from edge.camera import BACKENDS, source_class
from edge.detect import Detector
from edge.embedder import Embedder
from edge.errors import ConfigError
from edge.camera.base import FrameSource
from edge.cli import LAZY_COMMANDS
from edge.service.events import KINDS, MESSAGE_IDS, Event, event_kind
from edge.service.recognizer_service import COMPONENTS
from edge.service.sinks import EVENT_TYPES
from edge.types import Outcome

from .conftest import MODELS


def resolve(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


@pytest.mark.parametrize("registry, base", [(DETECTORS, Detector), (EMBEDDERS, Embedder)])
def test_every_model_backend_resolves_and_the_shipped_bundles_name_one(registry, base):
    for name in registry.names():
        cls = registry.load(name)  # no backend imports its optional runtime (onnxruntime) before it is built
        assert issubclass(cls, base) and not inspect.isabstract(cls), name
    for bundle in ("yunet", "sface-int8", "student-int8"):
        loaded = load_bundle(MODELS / bundle)
        if loaded.kind == base.__name__.lower():
            assert loaded.backend in registry.names()


def test_the_built_in_model_backends():
    assert {"opencv-yunet", "tflite-yunet"} <= set(DETECTORS.names())
    assert {"tflite", "opencv-dnn", "onnxruntime"} <= set(EMBEDDERS.names())


def test_an_unknown_backend_in_a_manifest_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown embedder backend 'coral-magic'; choose one of onnxruntime, "
                                          "opencv-dnn, tflite"):
        EMBEDDERS.load("coral-magic")
    with pytest.raises(ConfigError, match="unknown detector backend 'yolo'; choose one of opencv-yunet, tflite-yunet"):
        DETECTORS.load("yolo")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_camera_backend_resolves(name):
    cls = source_class(name)
    assert issubclass(cls, FrameSource) and cls.name == name


@pytest.mark.parametrize("target", sorted({**LAZY_COMMANDS, **COMPONENTS}.values()))
def test_every_lazy_command_and_component_resolves(target):
    assert callable(resolve(target))


def test_event_kinds_are_one_registry():
    assert len(set(MESSAGE_IDS.values())) == len(KINDS)
    assert all(kind.name == name for name, kind in KINDS.items())
    for outcome in Outcome:  # every decision becomes an event of a registered kind
        assert event_kind(outcome.value).name == outcome.value
    assert set(EVENT_TYPES) <= set(KINDS) and "granted" in EVENT_TYPES and "relay" not in EVENT_TYPES
    assert {k.name for k in KINDS.values() if k.door_state == "closed"} == {"door_closed"}


def test_an_unknown_event_kind_is_an_error_not_the_relay_id():
    with pytest.raises(ValueError, match="unknown event kind 'grantd'"):
        Event("grantd", "typo")


def test_every_face_check_and_liveness_backend_resolves_and_the_shipped_liveness_bundles_name_one():
    from edge.checks import CHECKS, FaceCheck
    from edge.liveness import LIVENESS_BACKENDS, LivenessModel

    for name in CHECKS.names():
        cls = CHECKS.load(name)
        assert issubclass(cls, FaceCheck) and cls.name == name and not inspect.isabstract(cls)
    for name in LIVENESS_BACKENDS.names():
        cls = LIVENESS_BACKENDS.load(name)
        assert issubclass(cls, LivenessModel) and not inspect.isabstract(cls), name
    for bundle in ("minifasnet-v2-fp16", "minifasnet-v1se-fp16"):
        assert load_bundle(MODELS / bundle).backend in LIVENESS_BACKENDS.names()
