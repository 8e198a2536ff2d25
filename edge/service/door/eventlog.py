"""The actuator's events: to the journal, and when ``door.events_log`` is set, to a JSON-lines file too."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..events import Event, Journal

log = logging.getLogger(__name__)

ROTATE_BYTES = 1 << 20  # keep one 1 MiB generation beside the current file


class EventWriter:
    """Actuator events to the journal and, when ``door.events_log`` is set, a JSON-lines file."""

    def __init__(self, path: Path | None) -> None:
        self.journal = Journal("edge-door")
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")

    def __call__(self, event: Event, record: dict) -> None:
        self.journal.write(event)
        if self._file is not None:
            try:
                if self._file.tell() > ROTATE_BYTES:
                    self._file.close()
                    os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
                    self._file = open(self.path, "a", buffering=1, encoding="utf-8")
                self._file.write(json.dumps({"ts": round(event.ts, 4), **record}) + "\n")
            except OSError as exc:
                log.warning("events log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
