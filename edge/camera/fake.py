"""A scriptable fake camera for tests: a list of images, then optionally a stall or a failure.

From a config (``camera.source = "fake"``), ``camera.path`` may name a script
file, one directive per line, so a test can drive a real ``edge serve`` process::

    # comment
    images edge/demo/replay 2     # a folder's images (sorted) or one image file, N times
    blank 10                      # N black frames
    stall 3600                    # then: stall (block) SECONDS and raise; or 'fail'; or 'end'

``camera.fps`` paces the frames (0: as fast as they are read).  Relative
paths are resolved against the script's folder.
"""

from __future__ import annotations

import time
from pathlib import Path
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
        fps: float = 0.0,
    ) -> None:
        super().__init__()
        if after not in ("end", "stall", "fail"):
            raise ValueError(after)
        self.images = list(images)
        self.after = after
        self.stall_seconds = stall_seconds
        self.lores_width = lores_width
        self.fail_start = fail_start
        self.fps = fps
        self._next_time = 0.0
        self.started = False
        self.stopped = False
        self._position = 0

    @classmethod
    def from_config(cls, config) -> "FakeSource":
        blank = np.zeros((config.camera.height, config.camera.width, 3), np.uint8)
        if config.camera.path:
            return cls.from_script(config._resolve(config.camera.path), blank, config.camera.lores_width, config.camera.fps)
        return cls([blank] * 3, lores_width=config.camera.lores_width)

    @classmethod
    def from_script(cls, path: Path, blank: np.ndarray, lores_width: int = 320, fps: float = 0.0) -> "FakeSource":
        from ..errors import ConfigError
        from ..images import is_image_file, load_image

        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"fake camera script {path}: {exc}") from exc
        images: list[np.ndarray] = []
        after, stall = "end", 3600.0
        for number, raw in enumerate(lines, 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            verb, args = words[0], words[1:]
            try:
                if verb == "images":
                    target = Path(args[0]) if Path(args[0]).is_absolute() else Path(path).parent / args[0]
                    files = sorted(p for p in target.iterdir() if is_image_file(p)) if target.is_dir() else [target]
                    loaded = [load_image(f) for f in files]
                    images.extend(loaded * (int(args[1]) if len(args) > 1 else 1))
                elif verb == "blank":
                    images.extend([blank] * int(args[0]))
                elif verb in ("end", "fail", "stall"):
                    after = verb
                    if verb == "stall" and args:
                        stall = float(args[0])
                else:
                    raise ValueError(f"unknown directive {verb!r}")
            except (IndexError, ValueError, OSError) as exc:
                raise ConfigError(f"fake camera script {path}:{number}: {exc}") from exc
        return cls(images, after=after, stall_seconds=stall, lores_width=lores_width, fps=fps)

    @classmethod
    def check(cls, config) -> str:
        source = cls.from_config(config)  # parses the script and loads its images
        return f"fake camera, {len(source.images)} frames then {source.after}"

    def start(self) -> None:
        if self.fail_start:
            raise CameraError("fake camera: configured to fail at start")
        self.started = True
        self._next_time = time.monotonic()

    def read(self) -> Frame | None:
        if self.fps > 0:
            delay = self._next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_time = max(self._next_time, time.monotonic() - 1.0) + 1.0 / self.fps
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
