"""Face checks: a stage between detection and embedding that can turn a face down.

A check receives the frame and its detected faces and returns one
:class:`~edge.types.Verdict` per face.  A face that fails any check is never
embedded and never counts towards a grant; when failing faces persist over
k of the last n frames, the decider reports a ``refused`` decision naming the
check (journald, audit table, MQTT/webhook events, ``edge run --json``).

Checks are chosen by name (``decision.face_checks``, comma-separated) from the
``edge.checks`` registry; packages add theirs through that entry-point group.
A check is built once at start-up with :meth:`FaceCheck.from_config`.
"""

from __future__ import annotations

import abc
from typing import Sequence

from .registry import Registry
from .types import Face, Frame, Verdict

CHECKS = Registry("face check", "edge.checks", {})


class FaceCheck(abc.ABC):
    name: str

    @classmethod
    def from_config(cls, config) -> "FaceCheck":
        return cls()

    @abc.abstractmethod
    def check(self, frame: Frame, faces: Sequence[Face]) -> list[Verdict]:
        """One verdict per face, in order."""


def check_names(config) -> list[str]:
    return [name.strip() for name in config.decision.face_checks.split(",") if name.strip()]


def build_checks(config) -> list[FaceCheck]:
    return [CHECKS.load(name).from_config(config) for name in check_names(config)]
