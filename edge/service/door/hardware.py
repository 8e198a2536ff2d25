"""The lock relay and the door contact, through gpiozero.

The backend is chosen by name the way gpiozero chooses it, by its pin factory
(``GPIOZERO_PIN_FACTORY``): ``lgpio`` on a Pi 5, ``mock`` in the tests, which is
why no second backend layer lives here.
"""

from __future__ import annotations

import importlib.util

from ...errors import DoorError

_NO_GPIOZERO = ("gpiozero is not installed: apt install python3-gpiozero python3-lgpio "
                "(venv with --system-site-packages) or pip install gpiozero")


def require_gpiozero() -> None:
    """DoorError unless gpiozero can be imported (checked without importing it, for check-config)."""
    if importlib.util.find_spec("gpiozero") is None:
        raise DoorError(_NO_GPIOZERO)


class Relay:
    """The lock relay (lgpio on a Pi 5, the mock factory in tests), off from the start."""

    def __init__(self, pin: int, active_high: bool = True) -> None:
        try:
            from gpiozero import OutputDevice  # apt: python3-gpiozero python3-lgpio
        except ImportError as exc:
            raise DoorError(_NO_GPIOZERO) from exc
        try:
            self.device = OutputDevice(pin, active_high=active_high, initial_value=False)
        except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, GPIOPinInUse, PinInvalidPin...)
            raise DoorError(f"relay GPIO{pin} cannot be driven: {type(exc).__name__}: {exc}") from exc
        self.pin = pin

    @property
    def is_on(self) -> bool:
        return bool(self.device.value)

    def on(self) -> None:
        self.device.on()

    def off(self) -> None:
        self.device.off()

    def close(self) -> None:
        try:
            self.device.off()
        finally:
            self.device.close()


class Contact:
    """A door contact: ``closed`` is True when the switch is made (reed switch next to its magnet)."""

    def __init__(self, pin: int, pull_up: bool = True) -> None:
        from gpiozero import DigitalInputDevice

        try:
            self.device = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None)
        except Exception as exc:
            raise DoorError(f"door contact GPIO{pin} cannot be read: {type(exc).__name__}: {exc}") from exc

    @property
    def closed(self) -> bool:
        return bool(self.device.is_active)

    def close(self) -> None:
        self.device.close()


def force_off(door) -> None:
    """Drive the relay off once and let go (``edge door --off``, after a crash or SIGKILL)."""
    Relay(door.relay_pin, door.active_high).close()
