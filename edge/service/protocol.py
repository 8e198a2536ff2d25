"""The recognizer <-> actuator protocol: one JSON object per line, one reply line per request.

Requests (``op``):

* ``unlock``  {"op": "unlock", "person": "Ada", "distance": 0.71, "frames": 3, "model": "sface-int8:..."}
  -> {"ok": true, "relay": true, "pulse_s": 3.0} or {"ok": false, "error": "rate_limited" | "lockout" |
  "forbidden" | "busy" ...}.  Only the configured recognizer uid may ask (SO_PEERCRED).
* ``lock``    relay off now (recognizer uid only).
* ``status``  anyone who can reach the socket: relay state, door contact, counters, lockout.
* ``events``  {"op": "events", "after": seq} -> {"ok": true, "events": [...], "seq": last}:
  door-contact and actuation events, so the recognizer can copy them into its audit table.

Requests are at most :data:`MAX_LINE` bytes (framing: :mod:`edge.sockets`); a longer one closes the connection.

Connections are short-lived: the actuator closes one a few seconds after it opened (one second for
any uid but the recognizer's, which also share a handful of slots of their own), so a client opens a
connection per request, as :class:`edge.service.lock_client.DoorClient` does.  ``unlock`` replies may
also say ``"error": "bad_config"``: the actuator found its pulse length unusable and will not energise.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

# The framing (one JSON object per line, bounded) is edge.sockets'; these are the door's own numbers.
MAX_LINE = 4096  # a request: what a stranger may make the actuator buffer
# A reply: an ``events`` answer carries up to the actuator's whole ring of 256 events, far past MAX_LINE.
MAX_REPLY_LINE = 1 << 20
OPS = ("unlock", "lock", "status", "events")


def socket_path(config) -> Path:
    """``door.socket`` resolved like every other relative path: against the config file's folder.

    Empty is a ConfigError here; ``edge serve`` reads it as "no actuator" and does not ask.
    """
    if not config.door.socket:
        raise ConfigError("door.socket is empty: edge door needs a socket path")
    path = Path(config.door.socket).expanduser()
    return path if path.is_absolute() else config.base_dir / path
