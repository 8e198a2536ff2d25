"""The recognizer's side of the actuator protocol: one short-lived connection per request."""

from __future__ import annotations

import time

from ..errors import DoorUnavailable, ProtocolError, SocketTimeoutError
from ..sockets import connect_unix, decode_line
from .protocol import MAX_REPLY_LINE


class DoorClient:
    """Asks the actuator at ``path``; ``timeout`` bounds each request as a whole (connect, send, reply)."""

    def __init__(self, path: str, timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, message: dict) -> dict:
        """One request, one reply; any failure is :class:`~edge.errors.DoorUnavailable`, naming the socket."""
        deadline = time.monotonic() + self.timeout
        try:
            with connect_unix(self.path, self.timeout, MAX_REPLY_LINE, deadline=deadline) as channel:
                channel.send(message, timeout=max(0.001, deadline - time.monotonic()))
                line = channel.read_line(deadline=deadline)
            if line is None:
                raise DoorUnavailable(f"actuator at {self.path} closed the connection without a reply")
            return decode_line(line)
        except SocketTimeoutError as exc:
            raise DoorUnavailable(f"actuator at {self.path} did not answer within {self.timeout:.2f} s") from exc
        except (OSError, ProtocolError) as exc:
            raise DoorUnavailable(f"actuator at {self.path}: {exc}") from exc

    def unlock(self, person: str | None = None, distance: float | None = None, frames: int | None = None,
               model: str | None = None) -> dict:
        return self.request({"op": "unlock", "person": person, "distance": distance, "frames": frames, "model": model})

    def lock(self) -> dict:
        return self.request({"op": "lock"})

    def status(self) -> dict:
        return self.request({"op": "status"})

    def events(self, after: int = 0) -> dict:
        return self.request({"op": "events", "after": after})
