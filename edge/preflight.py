"""What ``edge check-config`` verifies: everything start-up needs, without starting.

It is the units' ``ExecStartPre=``, so a config that would crash at start must
fail here, once, with the same error and exit status start-up would give,
instead of reaching a restart loop.  The checks build what start-up builds
(bundles verified by sha256 and seal, interpreters loaded, thresholds
resolved) and stop short of what has effects: the camera is not opened and
the gallery is only read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .errors import ConfigError, GalleryError

TARGETS = ("recognizer", "door", "sync")


def _writable_dir(path: Path, what: str) -> None:
    """``path`` exists as a writable folder, or could be created."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise GalleryError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GalleryError(f"{what} {path}: {probe} is not writable by this user (uid {os.getuid()})")


def check_recognizer(config: Config) -> list[str]:
    """Verify models, runtime, gallery, camera and sinks as ``edge run``/``edge serve`` would meet them."""
    from .app import build_companions, build_detector, build_embedder, effective_threshold
    from .camera import source_class
    from .gallery import Gallery
    from .matcher import check_gallery_model

    report = []
    detector = build_detector(config)
    report.append(f"detector {detector.bundle.model_id}: sha256 and manifest seal ok")
    embedder = build_embedder(config)
    threshold = effective_threshold(config, embedder)
    report.append(f"embedder {embedder.model_id} on {embedder.runtime}: sha256 and manifest seal ok, "
                  f"threshold {threshold:.4f}; licence: {embedder.bundle.manifest.get('licence', '?')}")
    for companion in build_companions(config, embedder.model_id):
        effective_threshold(config, companion, config.decision.confirm_threshold)
        report.append(f"confirm model {companion.model_id}: ok")
    gallery_path = config.gallery_path()
    if gallery_path.exists():
        with Gallery(gallery_path, create=False) as gallery:
            counts = gallery.model_counts()
            # Read only: relabelling legacy ids is start-up's job, so either id passes here.
            if counts and not {embedder.model_id, embedder.legacy_model_id} & set(counts):
                check_gallery_model(gallery, embedder.model_id)  # raises the mismatch start-up would
            report.append(f"gallery {gallery_path}: {sum(counts.values())} samples")
    else:
        _writable_dir(gallery_path.parent, "gallery")
        report.append(f"gallery {gallery_path}: will be created")
    from .checks import build_checks

    report += [f"face check {check.name}: built" for check in build_checks(config)]
    report.append("camera " + source_class(config.camera.source).check(config))
    events = config.events
    if events.mqtt_host:
        import importlib.util

        if importlib.util.find_spec("paho") is None:
            raise ConfigError("events.mqtt_host is set but paho-mqtt is not installed "
                              "(apt install python3-paho-mqtt, or pip install paho-mqtt)")
    if events.mqtt_password_file and not os.access(config._resolve(events.mqtt_password_file), os.R_OK):
        raise ConfigError(f"events.mqtt_password_file {events.mqtt_password_file} is not readable")
    return report


def check_door(config: Config) -> list[str]:
    """Verify what ``edge door`` needs, with the very check it runs at start: socket path, uid, GPIO library."""
    from .service.door import prerequisites
    from .service.protocol import socket_path

    path = socket_path(config)  # ConfigError when door.socket is empty
    uid = prerequisites.check(config.door)
    return [f"door: relay GPIO{config.door.relay_pin}, unlocks from uid {uid}, socket {path}"]


def check(config: Config, target: str) -> list[str]:
    if target == "sync":
        from .sync.service import preflight

        return preflight(config)
    if target == "door":
        return check_door(config)
    return check_recognizer(config)
