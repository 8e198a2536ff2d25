"""A scriptable fake camera for tests: a list of images, then optionally a stall or a failure."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..errors import CameraError
from ..types import Frame
from .base import FrameSource


class FakeSource(FrameSource):
    """Yields ``images`` in order; then ends, stalls (blocks ``stall_seconds``) or raises."""

    name = "fake"

    def __init__(
        self,
        images: Sequence[np.ndarray] = (),
        after: str = "end",
        stall_seconds: float = 3600.0,
        lores_width: int = 320,
        fail_start: bool = False,
    ) -> None:
        super().__init__()
        if after not in ("end", "stall", "fail"):
            raise ValueError(after)
        self.images = list(images)
        self.after = after
        self.stall_seconds = stall_seconds
        self.lores_width = lores_width
        self.fail_start = fail_start
        self.started = False
        self.stopped = False
        self._position = 0

    @classmethod
    def from_config(cls, config) -> "FakeSource":
        blank = np.zeros((config.camera.height, config.camera.width, 3), np.uint8)
        return cls([blank] * 3, lores_width=config.camera.lores_width)

    def start(self) -> None:
        if self.fail_start:
            raise CameraError("fake camera: configured to fail at start")
        self.started = True

    def read(self) -> Frame | None:
        if self._position < len(self.images):
            image = self.images[self._position]
            self._position += 1
            return self._frame(image, lores_width=self.lores_width)
        if self.after == "stall":
            time.sleep(self.stall_seconds)
            raise CameraError("fake camera: stalled")
        if self.after == "fail":
            raise CameraError("fake camera: device disappeared")
        return None

    def stop(self) -> None:
        self.stopped = True
