"""Which of two states of one person wins: the only conflict rule of the site, the same on every unit.

* A forget is final: a forgotten tombstone beats any state, whatever its version (privacy), and once a
  unit holds one, nothing brings that person id back (re-enrolling gives a new id).
* Otherwise the higher ``(version, unit)`` wins: every change bumps the person's version; two units that
  changed the same version concurrently are ordered by unit name, so all units pick the same one.
* Equal ``(version, unit)`` is the same state (a unit's own message coming back): nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stamp:
    version: int
    unit: str
    forgotten: bool = False

    @classmethod
    def of(cls, record: dict | None, self_unit: str) -> "Stamp | None":
        """The stamp of a gallery record (:meth:`Gallery.sync_record`); its unit None means this unit."""
        if record is None:
            return None
        return cls(int(record["version"]), record.get("unit") or self_unit,
                   record.get("kind") == "tombstone" and bool(record.get("forgotten")))


def remote_wins(remote: Stamp, local: Stamp | None) -> bool:
    if local is None:
        return True
    if local.forgotten:
        return False
    if remote.forgotten:
        return True
    return (remote.version, remote.unit) > (local.version, local.unit)
