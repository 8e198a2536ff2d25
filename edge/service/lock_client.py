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

    def _connect(self, deadline: float) -> socket.socket:
        # A socket with a timeout is non-blocking underneath, and a full listen backlog answers its connect
        # with EAGAIN at once: another local user's connect storm must cost an unlock a short wait, not
        # the unlock.  Each try takes a fresh socket.
        delay = 0.001
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                sock.connect(self.path)
                return sock
            except BlockingIOError:
                sock.close()
                if time.monotonic() + delay >= deadline:
                    raise TimeoutError("the actuator's listen backlog stayed full") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.02)
            except BaseException:
                sock.close()
                raise

    def request(self, message: dict) -> dict:
        deadline = time.monotonic() + self.timeout
        try:
            with self._connect(deadline) as sock:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
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
        except TimeoutError as exc:
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
