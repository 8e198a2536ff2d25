"""Between the gallery and the wire: this unit's records out, verified remote records in.

Every SQL statement stays in edge/gallery.py; this module decides (edge/sync/conflict.py) and calls
Gallery methods inside one transaction, so a concurrent enrollment on this unit cannot slip between
the comparison and the write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import NameTakenError
from ..gallery import Gallery
from . import payload
from .conflict import Stamp, remote_wins

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    action: str  # created, updated, removed, forgotten, stale, refused_forgotten, name_taken
    uuid: str
    unit: str
    detail: str = ""


def own_message(gallery: Gallery, person_uuid: str, *, site: str, unit: str, model_id: str, key) -> bytes | None:
    """The signed message of this unit's current record of a person; None when another unit wrote it."""
    record = gallery.sync_record(person_uuid)
    if record is None or record.get("unit") is not None:
        return None
    if record["kind"] == "person":
        body = payload.person_body(record, site=site, unit=unit, model_id=model_id)
    else:
        body = payload.tombstone_body(record, site=site, unit=unit)
    return payload.sign(body, key)


def apply(gallery: Gallery, verified: payload.Verified, *, self_unit: str, models: dict[str, str]) -> Outcome:
    """Apply a verified message if it wins over what this unit holds; a forget is VACUUMed away."""
    body = verified.body
    person_uuid, unit = body["uuid"], body["unit"]
    remote = Stamp(body["version"], unit, verified.kind == "tombstone" and body["forgotten"])
    with gallery.transaction():
        local = Stamp.of(gallery.sync_record(person_uuid, samples=False), self_unit)
        if not remote_wins(remote, local):
            return Outcome("refused_forgotten" if local and local.forgotten and not remote.forgotten else "stale",
                           person_uuid, unit)
        if verified.kind == "tombstone":
            counts = gallery.put_remote_tombstone(person_uuid, version=body["version"], unit=unit,
                                                  forgotten=body["forgotten"], removed_at=body.get("at"))
            action = "forgotten" if body["forgotten"] else "removed"
            detail = f"{counts['samples']} embeddings, {counts['crops']} crops, {counts['events']} events deleted"
        else:
            try:
                action = gallery.put_remote_person(verified.record(), unit, models)
            except NameTakenError as exc:
                return Outcome("name_taken", person_uuid, unit, str(exc))
            detail = f"{body['name']!r} version {body['version']}"
    if action == "forgotten":
        gallery.vacuum()  # the deleted embedding bytes leave the file, WAL included
    gallery.log_event("synced", model_id=body.get("model_id"),
                      detail={"unit": unit, "uuid": person_uuid, "change": action, "version": body["version"]})
    return Outcome(action, person_uuid, unit, detail)
