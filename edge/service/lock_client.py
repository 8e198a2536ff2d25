"""The recognizer's side of the actuator protocol: one short-lived connection per request."""

from __future__ import annotations

import socket
import time

from .protocol import MAX_LINE, ProtocolError, decode, encode


class DoorUnavailable(OSError):
    """The actuator did not answer (not running, socket missing, timeout, garbage)."""


class DoorClient:
    def __init__(self, path: str, timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, message: dict) -> dict:
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(encode(message))
                buffer = b""
                while b"\n" not in buffer:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = sock.recv(MAX_LINE)
                    if not chunk:
                        raise DoorUnavailable(f"actuator at {self.path} closed the connection without a reply")
                    buffer += chunk
                    if len(buffer) > MAX_LINE:
                        raise DoorUnavailable(f"actuator at {self.path} sent an over-long reply")
            return decode(buffer.split(b"\n", 1)[0])
        except DoorUnavailable:
            raise
        except socket.timeout as exc:
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
