"""The recognizer <-> actuator protocol: one JSON object per line, one reply line per request.

Requests (``op``):

* ``unlock``  {"op": "unlock", "person": "Ada", "distance": 0.71, "frames": 3, "model": "sface-int8:..."}
  -> {"ok": true, "relay": true, "pulse_s": 3.0} or {"ok": false, "error": "rate_limited" | "lockout" |
  "forbidden" | "busy" ...}.  Only the configured recognizer uid may ask (SO_PEERCRED).
* ``lock``    relay off now (recognizer uid only).
* ``status``  anyone who can reach the socket: relay state, door contact, counters, lockout.
* ``events``  {"op": "events", "after": seq} -> {"ok": true, "events": [...], "seq": last}:
  door-contact and actuation events, so the recognizer can copy them into its audit table.

Lines are at most :data:`MAX_LINE` bytes; anything else closes the connection.

Connections are short-lived: the actuator closes one a few seconds after it opened (one second for
any uid but the recognizer's, which also share a handful of slots of their own), so a client opens a
connection per request, as :class:`edge.service.lock_client.DoorClient` does.  ``unlock`` replies may
also say ``"error": "bad_config"``: the actuator found its pulse length unusable and will not energise.
"""

from __future__ import annotations

import json

MAX_LINE = 4096
OPS = ("unlock", "lock", "status", "events")


class ProtocolError(ValueError):
    pass


def encode(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


def decode(line: bytes) -> dict:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("a request must be a JSON object")
    return obj
