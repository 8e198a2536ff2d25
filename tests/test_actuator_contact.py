"""The door contact and the controller's rules, in-process with gpiozero's mock pins and a fake clock."""

from __future__ import annotations

import pytest

pytest.importorskip("gpiozero", reason="gpiozero is not installed (pip install -e '.[test]')")

from edge.config import DoorConfig
from edge.service.door.controller import DoorController
from edge.service.door.hardware import Contact, Relay


@pytest.fixture
def pins():
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = previous


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(pins, **door):
    clock = Clock()
    events = []
    cfg = DoorConfig(contact_pin=27, pulse_seconds=3.0, open_grace_seconds=10.0, left_open_seconds=60.0, **door)
    relay = Relay(cfg.relay_pin, cfg.active_high)
    contact = Contact(cfg.contact_pin, cfg.contact_pull_up)
    pins.pin(27).drive_low()  # door shut: reed switch closed to GND
    controller = DoorController(cfg, relay, contact, lambda e, r: events.append(r), clock)
    return controller, clock, events, pins.pin(17), pins.pin(27)


def kinds(events):
    return [e["event_type"] for e in events if e["event_type"] != "relay"]


def test_opened_after_an_unlock_is_expected(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins)
    assert controller.status()["door"] == "closed"
    controller.unlock({"person": "Ada"})
    assert relay_pin.state is True  # active high
    clock.now += 1
    contact_pin.drive_high()
    controller.tick()
    clock.now += 2.5
    controller.tick()
    assert relay_pin.state is False
    contact_pin.drive_low()
    controller.tick()
    assert kinds(events) == ["unlock", "door_opened", "door_closed"]


def test_opened_without_an_unlock_is_forced(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins)
    contact_pin.drive_high()
    controller.tick()
    assert kinds(events) == ["door_forced"]
    assert events[-1]["message"].startswith("door opened without an unlock")


def test_opened_long_after_the_pulse_is_forced(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins)
    controller.unlock({})
    clock.now += 3.0
    controller.tick()
    clock.now += 11.0
    contact_pin.drive_high()
    controller.tick()
    assert kinds(events) == ["unlock", "door_forced"]


def test_left_open_is_reported_once(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins)
    controller.unlock({})
    contact_pin.drive_high()
    controller.tick()
    for _ in range(3):
        clock.now += 40
        controller.tick()
    assert kinds(events) == ["unlock", "door_opened", "door_left_open"]
    assert controller.status()["door"] == "open"


def test_active_low_relay_boards(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins, active_high=False)
    assert relay_pin.state is True  # idle high = off on an active-low board
    controller.unlock({})
    assert relay_pin.state is False
    clock.now += 3
    controller.tick()
    assert relay_pin.state is True


def test_an_error_while_switching_on_leaves_the_relay_off(pins):
    controller, clock, events, relay_pin, contact_pin = make(pins)

    def broken_on():
        raise OSError("gpio write failed")

    controller.relay.on = broken_on
    with pytest.raises(OSError):
        controller.unlock({})
    assert relay_pin.state is False
    assert events[-1]["event_type"] == "relay" and events[-1]["reason"] == "error"
