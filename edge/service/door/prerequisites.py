"""What ``edge door`` needs before it touches anything: the recognizer's uid and a GPIO library.

One function for both who ask: ``edge door`` at start and ``edge check-config --for door`` (the unit's
``ExecStartPre=``), so the two cannot drift apart in what they accept or how they say no.
"""

from __future__ import annotations

from ...errors import ConfigError
from ...sockets import resolve_uid
from .hardware import require_gpiozero


def recognizer_uid(door) -> int:
    """``door.recognizer_user`` as a uid: the one peer whose unlock requests count (SO_PEERCRED)."""
    try:
        return resolve_uid(door.recognizer_user)
    except KeyError as exc:
        raise ConfigError(f"door.recognizer_user: no such user {door.recognizer_user!r}") from exc


def check(door) -> int:
    """ConfigError / DoorError unless the actuator can start; returns the recognizer's uid."""
    uid = recognizer_uid(door)
    require_gpiozero()
    return uid
