"""Door-contact events travel from the actuator's ring buffer to the recognizer's queue (then journal + SQLite)."""

from __future__ import annotations

import queue
import time

from edge.service.recognizer_service import _DoorEventPoller


class FakeDoor:
    def __init__(self):
        self.log = []
        self.seq = 0

    def add(self, kind):
        self.seq += 1
        self.log.append({"seq": self.seq, "event_type": kind, "message": kind, "ts": time.time()})

    def status(self):
        return {"ok": True, "seq": self.seq}

    def events_after(self, after):
        return [e for e in self.log if e["seq"] > after]

    def events(self, after=0):
        return {"ok": True, "events": self.events_after(after), "seq": self.seq}


def test_only_new_door_events_are_copied():
    door = FakeDoor()
    door.add("door_forced")  # before the recognizer started: not copied again
    out = queue.Queue()
    poller = _DoorEventPoller(door, out, interval=0.02)
    poller.start()
    try:
        time.sleep(0.1)
        door.add("relay")  # actuation details stay in the actuator's journal
        door.add("door_opened")
        door.add("door_left_open")
        deadline = time.monotonic() + 2
        got = []
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                got.append(out.get(timeout=0.1)["event_type"])
            except queue.Empty:
                pass
        assert got == ["door_opened", "door_left_open"]
        # The actuator restarts: its numbering begins again and is followed.
        door.log, door.seq = [], 0
        time.sleep(0.1)
        door.add("door_closed")
        assert out.get(timeout=2)["event_type"] == "door_closed"
    finally:
        poller.halt.set()
