"""Frame sources behind one small interface, chosen by name (like gpiozero's pin factories).

``camera.source = "fake"`` selects the scriptable fake for tests; ``picamera2``
is imported only when chosen, so the runtime imports on machines without the
Pi camera stack.
"""

from __future__ import annotations

from ..config import Config
from ..registry import Registry
from .base import FrameSource, make_lores

BACKENDS = {
    "replay": "edge.camera.replay:ReplaySource",
    "opencv": "edge.camera.opencv_capture:OpenCVSource",
    "picamera2": "edge.camera.picamera2_source:Picamera2Source",
    "fake": "edge.camera.fake:FakeSource",
}


CAMERAS = Registry("camera source", "edge.cameras", BACKENDS)


def source_class(name: str) -> type[FrameSource]:
    return CAMERAS.load(name)


def open_source(config: Config) -> FrameSource:
    """Build (not yet start) the frame source the config names."""
    cls = source_class(config.camera.source)
    return cls.from_config(config)


__all__ = ["FrameSource", "make_lores", "open_source", "source_class", "BACKENDS", "CAMERAS"]
