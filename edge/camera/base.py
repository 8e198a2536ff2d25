"""The frame-source interface every camera backend implements."""

from __future__ import annotations

import abc
import time

import cv2
import numpy as np

from ..types import Frame


def make_lores(main: np.ndarray, lores_width: int) -> tuple[np.ndarray, float]:
    """Downscale ``main`` for the detector; returns (lores, scale from lores to main).

    Backends without a hardware lores stream use this so the detector always
    sees a small image and the aligner always crops from the full one.
    """
    width = main.shape[1]
    if width <= lores_width:
        return main, 1.0
    scale = width / lores_width
    height = int(round(main.shape[0] / scale))
    return cv2.resize(main, (lores_width, height), interpolation=cv2.INTER_AREA), scale


class FrameSource(abc.ABC):
    """Start, read frames, stop.  ``read`` returns None only at the end of a finite stream.

    A live camera that stops delivering raises :class:`edge.errors.CameraError`:
    the caller keeps the door locked and exits so that systemd restarts it.
    """

    name = "source"

    def __init__(self) -> None:
        self._index = 0

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config) -> "FrameSource":
        ...

    @classmethod
    def check(cls, config) -> str:
        """What ``edge check-config`` can verify without opening the camera; raises CameraError.

        Returns a one-line description of the source for the check's report.
        """
        return cls.name

    @abc.abstractmethod
    def start(self) -> None:
        ...

    @abc.abstractmethod
    def read(self) -> Frame | None:
        ...

    @abc.abstractmethod
    def stop(self) -> None:
        ...

    def _frame(self, main: np.ndarray, lores: np.ndarray | None = None, scale: float = 1.0, lores_width: int = 320) -> Frame:
        if lores is None:
            lores, scale = make_lores(main, lores_width)
        frame = Frame(index=self._index, timestamp=time.monotonic(), main=main, lores=lores, lores_scale=scale, source=self.name)
        self._index += 1
        return frame

    def __enter__(self) -> "FrameSource":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
