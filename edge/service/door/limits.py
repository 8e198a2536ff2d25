"""The actuator's numbers, each finite and inside DoorConfig's range, whatever the config said.

Config validation refuses NaN and out-of-range values, but this is the process that holds the lock:
it checks again, and anything unusable becomes the strict end of its range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ...config import DoorConfig

# The relay never stays on longer than this, whatever it is told: DoorConfig's upper bound for
# pulse_seconds, repeated here because the process that holds the lock must not trust its input.
MAX_PULSE_SECONDS = 30.0


# For each limit, the end of its configured range that keeps the door shut or raises the alarm sooner:
# what an unusable value (NaN, which fails every comparison, or one out of range) is replaced by.
_STRICT_END = {
    "max_unlocks_per_minute": "lo",
    "flood_requests": "lo",
    "flood_window_seconds": "hi",
    "lockout_seconds": "hi",
    "open_grace_seconds": "lo",
    "left_open_seconds": "lo",
}


@dataclass(frozen=True)
class DoorLimits:
    """The controller's numbers, each finite and inside DoorConfig's range; ``pulse_seconds`` None: never energise."""

    pulse_seconds: float | None
    max_unlocks_per_minute: int
    flood_requests: int
    flood_window_seconds: float
    lockout_seconds: float
    open_grace_seconds: float
    left_open_seconds: float

    @classmethod
    def of(cls, door) -> tuple[DoorLimits, list[str]]:
        """Limits from a door config that may not have been validated; also what had to be replaced."""
        meta = {f.name: f.metadata for f in dataclasses.fields(DoorConfig)}
        problems: list[str] = []
        values: dict = {}
        for name, end in _STRICT_END.items():
            lo, hi = meta[name]["lo"], meta[name]["hi"]
            raw = getattr(door, name, None)
            value = _number(raw)
            if value is None:
                value = lo if end == "lo" else hi
                problems.append(f"door.{name}={raw!r:.40} is not a number: using {value:g}")
            elif not lo <= value <= hi:
                clamped = min(max(value, lo), hi)
                problems.append(f"door.{name}={raw!r} is out of range [{lo:g}, {hi:g}]: using {clamped:g}")
                value = clamped
            values[name] = int(value) if isinstance(lo, int) else float(value)
        raw = getattr(door, "pulse_seconds", None)
        pulse = _number(raw)
        if pulse is None or not math.isfinite(pulse) or pulse <= 0:
            problems.append(f"door.pulse_seconds={raw!r:.40} is not a usable duration: unlocks refused")
            pulse = None
        elif pulse > MAX_PULSE_SECONDS:
            problems.append(f"door.pulse_seconds={raw!r} is longer than {MAX_PULSE_SECONDS:g} s: using that")
            pulse = MAX_PULSE_SECONDS
        return cls(pulse_seconds=pulse, **values), problems


def _number(value) -> float | None:
    """``value`` as a float, None if it is not a number or NaN (inf is kept: clamping handles it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value
