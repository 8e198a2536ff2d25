"""Events: journald with structured fields, the SQLite audit table, and the optional sinks.

Every decision and actuation becomes one :class:`Event`.  :class:`Journal`
writes it with ``journal.send`` (systemd-python, apt ``python3-systemd``): a
``MESSAGE_ID`` per kind, so ``journalctl MESSAGE_ID=...`` or
``journalctl -u edge-recognizer EDGE_EVENT=granted PERSON="Ada Lovelace"`` finds them.
Without systemd-python it falls back to one plain log line per event.

The :class:`EventBus` fans an event out to the journal, the audit table and the
sinks; a failing sink is logged and dropped from that one event, never raised.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger("edge.events")

# syslog priorities
ALERT, ERR, WARNING, NOTICE, INFO, DEBUG = 1, 3, 4, 5, 6, 7


@dataclass(frozen=True)
class EventKind:
    """Everything the sinks need to know about one kind of event, in one place.

    ``message_id`` is its stable 128-bit journald id (``journalctl MESSAGE_ID=...``): never change a value.
    ``home_assistant``: listed as an event type of the Home Assistant access entity.
    ``door_state``: what the event says about the door ("open"/"closed"), for the door binary sensor.
    """

    name: str
    message_id: str
    priority: int = INFO
    home_assistant: bool = False
    door_state: str | None = None


_KINDS = (
    EventKind("granted", "f183ec6dc56f40c9bf81730be725b198", NOTICE, home_assistant=True),
    EventKind("unknown", "358a4b5c4e964810a5a08f26863c6c04", home_assistant=True),
    EventKind("no_face", "8e2db556260e4e08bf57c5b33d8c1371", DEBUG),
    EventKind("refused", "1a6bd845974b48f99bb4e20cc9ebfa00", WARNING, home_assistant=True),
    EventKind("spoof", "5d0f3c8e2a7b4e61b9d4c2a18f6e7b30", WARNING, home_assistant=True),
    EventKind("spoof_alert", "c7e2a9146b3d4f58a01e9d7c3b5f8a62", ALERT, home_assistant=True),
    EventKind("unlock", "7bdae0cf5e504653a3f87376e74a0983", NOTICE, home_assistant=True),
    EventKind("unlock_refused", "2f346f6e6b804cc5a75a335d4560d234", WARNING, home_assistant=True),
    EventKind("unlock_failed", "c2505004fcb64cf1849aa7de4b9bb8a2", ERR, home_assistant=True),
    EventKind("door_opened", "452a4b0da93c4423bc7999f9bd9a75be", home_assistant=True, door_state="open"),
    EventKind("door_closed", "d339f34ca88e4cd7b28f8079b97a197a", home_assistant=True, door_state="closed"),
    EventKind("door_forced", "afac7caf127c461c83ebffb66b1c496f", ALERT, home_assistant=True, door_state="open"),
    EventKind("door_left_open", "4f1249ce7ea444d8aecd5bb9077b8c09", WARNING, home_assistant=True,
              door_state="open"),
    EventKind("door_lockout", "e8b22173f8614504b9ae6464b8091b49", ALERT, home_assistant=True),
    EventKind("relay", "105295a945a440758ef7a093fdd3574c", DEBUG),
    EventKind("service_started", "4ea07190a84548e4a31cdc58f0082ed4"),
    EventKind("service_stopped", "a387811be5474c65bae7329e1e3f1249"),
    EventKind("config_reloaded", "6e3937e971684d76b206363a11b2a89d"),
    EventKind("sink_failed", "dfd7b6ee390545cda4a655a50f07ad62", WARNING),
)
KINDS: dict[str, EventKind] = {kind.name: kind for kind in _KINDS}
# Views kept for journalctl users and tests.
MESSAGE_IDS = {name: kind.message_id for name, kind in KINDS.items()}


def event_kind(name: str) -> EventKind:
    """The registered kind; an unknown name is a bug, not an event to file under another id."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown event kind {name!r}; register it in edge.service.events.KINDS") from None


_LOGGING_LEVEL = {ALERT: logging.CRITICAL, ERR: logging.ERROR, WARNING: logging.WARNING, NOTICE: logging.INFO,
                  INFO: logging.INFO, DEBUG: logging.DEBUG}


@dataclass(frozen=True)
class Event:
    kind: str
    message: str
    ts: float = field(default_factory=time.time)
    person: str | None = None
    person_id: int | None = None
    distance: float | None = None
    frames: int | None = None
    model: str | None = None
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        event_kind(self.kind)

    @property
    def priority(self) -> int:
        return KINDS[self.kind].priority

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape sinks publish (Home Assistant reads ``event_type``)."""
        out: dict[str, Any] = {"event_type": self.kind, "ts": round(self.ts, 3), "message": self.message}
        for key in ("person", "distance", "frames", "model"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 4) if isinstance(value, float) else value
        out.update(self.detail)
        return out

    def journal_fields(self) -> dict[str, str]:
        fields = {"EDGE_EVENT": self.kind}
        if self.person is not None:
            fields["PERSON"] = self.person
        if self.distance is not None:
            fields["DISTANCE"] = f"{self.distance:.4f}"
        if self.frames is not None:
            fields["FRAMES"] = str(self.frames)
        if self.model:
            fields["MODEL"] = self.model
        for key, value in self.detail.items():
            name = "EDGE_" + "".join(c if c.isalnum() else "_" for c in key).upper()
            fields[name] = str(value)
        return fields


class Journal:
    """journald when systemd-python is importable and journald reachable; plain logging otherwise."""

    def __init__(self, identifier: str = "edge", use_journal: bool | None = None) -> None:
        self.identifier = identifier
        self._send = None
        if use_journal is not False:
            try:
                from systemd import journal  # apt: python3-systemd

                # Only when journald is there to receive (under systemd: $JOURNAL_STREAM or the socket).
                if use_journal or os.environ.get("JOURNAL_STREAM") or os.path.exists("/run/systemd/journal/socket"):
                    self._send = journal.send
            except ImportError:
                pass

    @property
    def structured(self) -> bool:
        return self._send is not None

    def write(self, event: Event) -> None:
        fields = event.journal_fields()
        if self._send is not None:
            try:
                self._send(MESSAGE=event.message, MESSAGE_ID=KINDS[event.kind].message_id,
                           PRIORITY=str(event.priority), SYSLOG_IDENTIFIER=self.identifier, **fields)
                return
            except (OSError, ValueError) as exc:  # journald gone or refused: fall through to the log line
                log.debug("journal.send failed: %s", exc)
        extras = " ".join(f"{k}={v!r}" if " " in v else f"{k}={v}" for k, v in fields.items() if k != "EDGE_EVENT")
        log.log(_LOGGING_LEVEL.get(event.priority, logging.INFO), "%s: %s%s", event.kind, event.message,
                f" [{extras}]" if extras else "")


class EventBus:
    """Journal + audit table + sinks.  ``audit`` is a callable writing one row (the gallery's ``log_event``)."""

    def __init__(self, journal: Journal, audit: Callable[..., Any] | None = None, sinks: Iterable = ()) -> None:
        self.journal = journal
        self.audit = audit
        self.sinks = list(sinks)

    def replace_sinks(self, sinks: Iterable) -> None:
        old, self.sinks = self.sinks, list(sinks)
        for sink in old:
            sink.close()

    def emit(self, event: Event, audit: bool = True) -> None:
        self.journal.write(event)
        if audit and self.audit is not None:
            try:
                self.audit(event.kind, name=event.person, person_id=event.person_id, distance=event.distance,
                           frames=event.frames, model_id=event.model, detail=event.detail or None, ts=event.ts)
            except Exception as exc:  # the audit trail failing must not stop the door loop
                log.error("audit table write failed for %s: %s", event.kind, exc)
        payload = event.as_dict()
        for sink in self.sinks:
            sink.submit(payload)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def decision_event(decision) -> Event:
    """A :class:`edge.types.Decision` as an event (kind = the outcome)."""
    # Journal fields and sink payloads carry only what is set: no EDGE_SCORE=None, no alert=false.
    checked = {k: round(v, 4) if k == "score" else v for k, v in decision.check_detail().items()
               if v is not None and v is not False}
    return Event(
        kind=decision.outcome.value, message=decision.describe(), person=decision.name, person_id=decision.person_id,
        distance=decision.distance, frames=decision.frames, model=decision.model or None,
        detail={"window": decision.window, "frame": decision.frame_index, **checked},
    )


def decision_events(decision) -> list[Event]:
    """The decision's event, and a ``spoof_alert`` after it when it completed a run of attacks."""
    events = [decision_event(decision)]
    if decision.alert:
        events.append(Event(
            kind="spoof_alert", message=f"repeated presentation attacks at the door (the last: {decision.reason})",
            frames=decision.frames, model=decision.model or None,
            detail={"check": decision.check, "frame": decision.frame_index,
                    **({"score": round(decision.score, 4)} if decision.score is not None else {})},
        ))
    return events
