"""Replay a folder of images or a video file as if it were the door camera (demo, tests)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2

from ..errors import CameraError, ImageError
from ..images import is_image_file, load_image
from ..types import Frame
from .base import FrameSource

log = logging.getLogger(__name__)


class ReplaySource(FrameSource):
    name = "replay"

    def __init__(self, path: str | Path, fps: float = 10.0, loop: bool = False, lores_width: int = 320) -> None:
        super().__init__()
        self.path = Path(path)
        self.fps = fps
        self.loop = loop
        self.lores_width = lores_width
        self._files: list[Path] = []
        self._video: cv2.VideoCapture | None = None
        self._position = 0
        self._next_time = 0.0

    @classmethod
    def from_config(cls, config) -> "ReplaySource":
        return cls(config.camera_path(), config.camera.fps, config.camera.loop, config.camera.lores_width)

    @classmethod
    def check(cls, config) -> str:
        path = Path(config.camera_path())
        if path.is_dir():
            if not any(is_image_file(p) for p in path.iterdir()):
                raise CameraError(f"replay folder {path} holds no images")
        elif not path.is_file():
            raise CameraError(f"replay source {path} does not exist")
        return f"replay {path}"

    def start(self) -> None:
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir() if is_image_file(p))
            if not self._files:
                raise CameraError(f"replay folder {self.path} holds no images")
        elif self.path.is_file():
            self._video = cv2.VideoCapture(str(self.path))
            if not self._video.isOpened():
                raise CameraError(f"replay file {self.path} is not a readable video")
        else:
            raise CameraError(f"replay source {self.path} does not exist")
        self._position = 0
        self._next_time = time.monotonic()
        log.info("replaying %s", self.path)

    def _pace(self) -> None:
        if self.fps <= 0:
            return
        delay = self._next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_time = max(self._next_time, time.monotonic() - 1.0) + 1.0 / self.fps

    def read(self) -> Frame | None:
        self._pace()
        if self._video is not None:
            ok, image = self._video.read()
            if not ok and self.loop:
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._video.read()
            return self._frame(image, lores_width=self.lores_width) if ok else None
        if self._position >= len(self._files):
            if not self.loop:
                return None
            self._position = 0
        path = self._files[self._position]
        self._position += 1
        try:
            image = load_image(path)
        except ImageError as exc:
            raise CameraError(f"replay frame unreadable: {exc}") from exc
        return self._frame(image, lores_width=self.lores_width)

    def stop(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
