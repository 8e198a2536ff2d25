"""Camera backends without their hardware: picamera2 behind a fake module."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edge.camera.picamera2_source import Picamera2Source
from edge.errors import CameraError


class StalledPicamera2:
    """Starts, then never completes a request: what a camera whose cable came loose looks like."""

    def __init__(self):
        self.waits = []

    def create_video_configuration(self, **kwargs):
        return kwargs

    def configure(self, config):
        self.config = config

    def start(self):
        pass

    def capture_request(self, wait=None):
        self.waits.append(wait)
        if wait is None:  # picamera2 waits for ever: the bug this guards against
            threading.Event().wait()
        time.sleep(wait)
        raise TimeoutError()

    def stop(self):
        pass

    def close(self):
        pass


def test_a_stalled_pi_camera_fails_within_read_timeout(monkeypatch):
    camera = StalledPicamera2()
    monkeypatch.setitem(sys.modules, "picamera2", SimpleNamespace(Picamera2=lambda: camera))
    source = Picamera2Source(640, 480, 320, read_timeout=0.2)
    source.start()
    started = time.monotonic()
    with pytest.raises(CameraError, match=r"delivered no frame for 0\.2 s"):
        source.read()
    assert time.monotonic() - started < 2 and camera.waits == [0.2]
    source.stop()


def test_picamera2_reads_main_and_lores(monkeypatch):
    class Request:
        def make_array(self, name):
            return np.zeros((480, 640, 3), np.uint8) if name == "main" else np.zeros((240 * 3 // 2, 320), np.uint8)

        def release(self):
            pass

    camera = StalledPicamera2()
    camera.capture_request = lambda wait=None: Request()
    monkeypatch.setitem(sys.modules, "picamera2", SimpleNamespace(Picamera2=lambda: camera))
    source = Picamera2Source(640, 480, 320)
    source.start()
    frame = source.read()
    assert frame.main.shape == (480, 640, 3) and frame.lores.shape == (240, 320, 3) and frame.lores_scale == 2.0


def test_a_noir_module_starts_with_its_tuning_file(monkeypatch):
    from edge.config import config_from_dict

    camera = StalledPicamera2()
    made = []

    class FakePicamera2:
        @staticmethod
        def load_tuning_file(name):
            return {"loaded": name}

        def __new__(cls, tuning=None):
            made.append(tuning)
            return camera

    monkeypatch.setitem(sys.modules, "picamera2", SimpleNamespace(Picamera2=FakePicamera2))
    config = config_from_dict({"camera": {"source": "picamera2", "tuning": "imx708_noir.json"}})
    source = Picamera2Source.from_config(config)
    source.start()
    source.stop()
    assert made == [{"loaded": "imx708_noir.json"}]
