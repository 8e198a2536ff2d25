"""Raspberry Pi camera through picamera2: detect on the lores stream, crop from main.

picamera2 comes from apt on the Pi (python3-picamera2, venv with
--system-site-packages); it is imported only when this backend is chosen.
"""

from __future__ import annotations

import logging

import cv2

from ..errors import CameraError
from ..types import Frame
from .base import FrameSource

log = logging.getLogger(__name__)


class Picamera2Source(FrameSource):
    name = "picamera2"

    def __init__(self, width: int = 640, height: int = 480, lores_width: int = 320, read_timeout: float = 5.0,
                 tuning: str = "") -> None:
        super().__init__()
        self.tuning = tuning
        self.read_timeout = read_timeout
        self.width, self.height = width, height
        self.lores_width = lores_width
        # The ISP needs even lores dimensions with the main aspect ratio.
        lores_height = int(round(height * lores_width / width)) // 2 * 2
        self.lores_size = (lores_width // 2 * 2, lores_height)
        self._camera = None

    @classmethod
    def from_config(cls, config) -> "Picamera2Source":
        c = config.camera
        return cls(c.width, c.height, c.lores_width, c.read_timeout, c.tuning)

    @classmethod
    def check(cls, config) -> str:
        import importlib.util

        if importlib.util.find_spec("picamera2") is None:
            raise CameraError(
                "camera.source = picamera2 but picamera2 is not importable: on Raspberry Pi OS run "
                "'sudo apt install python3-picamera2' and use a venv made with --system-site-packages"
            )
        return "picamera2"

    def start(self) -> None:
        try:
            from picamera2 import Picamera2  # apt: python3-picamera2
        except ImportError as exc:
            raise CameraError(
                "camera.source = picamera2 but picamera2 is not importable: on Raspberry Pi OS run "
                "'sudo apt install python3-picamera2' and use a venv made with --system-site-packages"
            ) from exc
        try:
            # A NoIR module (no infrared-cut filter) needs its own tuning, or its colours and exposure are wrong.
            camera = Picamera2(tuning=Picamera2.load_tuning_file(self.tuning)) if self.tuning else Picamera2()
            config = camera.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                lores={"size": self.lores_size, "format": "YUV420"},
                buffer_count=4,
            )
            camera.configure(config)
            camera.start()
        except Exception as exc:  # picamera2/libcamera raise bare RuntimeErrors and more
            raise CameraError(f"Pi camera could not be started: {exc}") from exc
        self._camera = camera
        log.info("picamera2 started: main %dx%d, lores %dx%d%s", self.width, self.height, *self.lores_size,
                 f", tuning {self.tuning}" if self.tuning else "")

    def read(self) -> Frame | None:
        if self._camera is None:
            raise CameraError("camera read before start")
        try:
            # A number for wait is a timeout (picamera2 >= 0.3.17, bookworm ships newer): without it a
            # stalled camera blocks the loop forever instead of failing closed for systemd to restart.
            request = self._camera.capture_request(wait=self.read_timeout)
            try:
                # "RGB888" in libcamera is BGR byte order in memory, what OpenCV wants.
                main = request.make_array("main")
                yuv = request.make_array("lores")
            finally:
                request.release()
        except TimeoutError as exc:
            raise CameraError(f"Pi camera delivered no frame for {self.read_timeout:.1f} s") from exc
        except Exception as exc:
            raise CameraError(f"Pi camera stopped delivering frames: {exc}") from exc
        lores = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
        return self._frame(main, lores, self.width / lores.shape[1])

    def stop(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            finally:
                self._camera = None
