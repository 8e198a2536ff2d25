"""OpenCV capture: a USB webcam (/dev/videoN or an index), an RTSP stream or a video file."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import cv2

from ..errors import CameraError
from ..types import Frame
from .base import FrameSource

log = logging.getLogger(__name__)


class OpenCVSource(FrameSource):
    name = "opencv"

    def __init__(self, target: str, width: int = 640, height: int = 480, lores_width: int = 320, read_timeout: float = 5.0) -> None:
        super().__init__()
        self.target = target
        self.width, self.height = width, height
        self.lores_width = lores_width
        self.read_timeout = read_timeout
        self._capture: cv2.VideoCapture | None = None

    @classmethod
    def from_config(cls, config) -> "OpenCVSource":
        c = config.camera
        return cls(config.camera_path() or "0", c.width, c.height, c.lores_width, c.read_timeout)

    @classmethod
    def check(cls, config) -> str:
        target = config.camera_path() or "0"
        # A device node must exist now; a stream URL can only be proven by opening it.
        device = Path(f"/dev/video{target}") if target.isdigit() else Path(target)
        if target.isdigit() or target.startswith("/dev/"):
            if not device.exists():
                raise CameraError(f"camera {device} does not exist (is the USB camera plugged in?)")
            if not stat.S_ISCHR(device.stat().st_mode):
                raise CameraError(f"camera {device} is not a video device")
            if not os.access(device, os.R_OK | os.W_OK):
                raise CameraError(f"camera {device}: no permission (is this user in the video group?)")
        elif "://" not in target and not device.is_file():
            raise CameraError(f"camera {target!r} is neither a device, a stream URL nor an existing video file")
        return f"opencv {target}"

    def start(self) -> None:
        target: int | str = int(self.target) if self.target.isdigit() else self.target
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            raise CameraError(f"camera {self.target!r} could not be opened (missing device, no permission or bad URL)")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        # A one-frame buffer: stale frames at a door are worse than dropped ones.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture
        log.info("opened camera %s", self.target)

    def read(self) -> Frame | None:
        if self._capture is None:
            raise CameraError("camera read before start")
        deadline = time.monotonic() + self.read_timeout
        while True:
            ok, image = self._capture.read()
            if ok and image is not None:
                return self._frame(image, lores_width=self.lores_width)
            if time.monotonic() > deadline:
                raise CameraError(f"camera {self.target!r} delivered no frame for {self.read_timeout:.1f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
