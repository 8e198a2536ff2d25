"""The on-device gallery: people, their embeddings and the audit trail, in one SQLite file.

* Schema changes go through sqlite-utils ``Migrations``; every write is one
  ``db.atomic()`` transaction, so a killed enrollment leaves nothing half-done.
* WAL journal: the recognizer reads while an enrollment process writes.
* Each sample records the model it was embedded with (``model_id`` = bundle
  name + sha256 prefix); embeddings from different models are never compared.
* Face images are not stored unless the operator asks (``keep_crops``);
  deleting a person deletes their embeddings and crops for real (the caller
  can VACUUM, see :meth:`Gallery.vacuum`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import sqlite_utils
from sqlite_utils.migrations import Migrations

from .errors import GalleryError, InvalidNameError, NameTakenError, PersonNotFoundError

log = logging.getLogger(__name__)

migrations = Migrations("edge.gallery")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["people"].create(
        {"id": int, "name": str, "created_at": float, "updated_at": float, "last_seen": float, "note": str},
        pk="id",
        not_null={"name", "created_at"},
    )
    db["people"].create_index(["name"], unique=True)
    db["samples"].create(
        {
            "id": int,
            "person_id": int,
            "model_id": str,
            "capture_id": str,
            "embedding": bytes,
            "dtype": str,
            "dim": int,
            "scale": float,
            "quality": float,
            "source": str,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("person_id", "people", "id")],
        not_null={"person_id", "model_id", "embedding", "dtype", "dim"},
    )
    db["samples"].create_index(["person_id"])
    db["samples"].create_index(["model_id"])
    db["crops"].create(
        {"id": int, "person_id": int, "capture_id": str, "image": bytes, "created_at": float},
        pk="id",
        foreign_keys=[("person_id", "people", "id")],
    )
    db["events"].create(
        {
            "id": int,
            "ts": float,
            "kind": str,
            "person_id": int,
            "name": str,
            "distance": float,
            "frames": int,
            "model_id": str,
            "detail": str,
        },
        pk="id",
    )
    db["events"].create_index(["ts"])
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert({"key": "gallery_version", "value": "0"})


@migrations()
def m002_stable_ids_tombstones_changes(db: sqlite_utils.Database) -> None:
    """Groundwork for sharing a gallery between units: names are labels, the uuid is the person.

    ``tombstones`` remember a removed person's uuid and when (nothing else: no name, no
    biometric data); ``changes`` numbers every write that touched a person, in order.
    """
    db["people"].add_column("uuid", str)
    for (person_id,) in db.execute("SELECT id FROM people").fetchall():
        db.execute("UPDATE people SET uuid = ? WHERE id = ?", [uuid.uuid4().hex, person_id])
    db["people"].create_index(["uuid"], unique=True)
    db.execute("CREATE TABLE tombstones (uuid TEXT PRIMARY KEY, removed_at REAL NOT NULL, forgotten INTEGER NOT NULL)")
    # AUTOINCREMENT: a sequence number is never handed out twice, even after the newest change is gone.
    db.execute("CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, person_uuid TEXT NOT NULL, "
               "kind TEXT NOT NULL, at REAL NOT NULL)")
    now = time.time()
    db.execute("INSERT INTO changes (person_uuid, kind, at) SELECT uuid, 'migrated', ? FROM people ORDER BY id", [now])


@migrations()
def m003_sync_versions(db: sqlite_utils.Database) -> None:
    """What gallery sync (edge/sync/) needs: a version and an origin per person and tombstone, a unit per change.

    ``origin_unit`` NULL means this unit wrote the current state; ``changes.unit`` NULL means a
    local write (what this unit publishes), else the unit whose signed change was applied here.
    """
    db.execute("ALTER TABLE people ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE people ADD COLUMN origin_unit TEXT")
    db.execute("ALTER TABLE tombstones ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE tombstones ADD COLUMN origin_unit TEXT")
    db.execute("ALTER TABLE changes ADD COLUMN unit TEXT")


# What a sample row holds beside its person and its embedding bytes (also an export's sample fields).
SAMPLE_FIELDS = ("model_id", "capture_id", "dtype", "dim", "scale", "quality", "source", "created_at")
CHANGE_KINDS = ("created", "samples_added", "renamed", "removed", "forgotten", "imported", "migrated", "updated")


@dataclass(frozen=True)
class PersonSummary:
    id: int
    name: str
    uuid: str
    samples: int
    models: tuple[str, ...]
    created_at: float
    last_seen: float | None
    crops: int


@dataclass(frozen=True)
class GalleryMatrix:
    """What the matcher holds in memory: one row per sample, unit-norm float32."""

    embeddings: np.ndarray
    person_ids: np.ndarray
    names: dict[int, str]
    version: int


def encode_embedding(vector: np.ndarray, dtype: str) -> tuple[bytes, float | None]:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    if dtype == "float32":
        return vector.tobytes(), None
    if dtype == "int8":
        # Per-vector scale: unit embeddings rarely have a component near 1, so a
        # fixed 1/127 scale would waste most of the int8 range.
        scale = float(np.abs(vector).max()) / 127.0 or 1.0
        return np.clip(np.round(vector / scale), -127, 127).astype(np.int8).tobytes(), scale
    raise GalleryError(f"unknown embedding dtype {dtype!r}")


def decode_embedding(blob: bytes, dtype: str, dim: int, scale: float | None) -> np.ndarray:
    if dtype == "float32":
        vector = np.frombuffer(blob, dtype=np.float32)
    elif dtype == "int8":
        vector = np.frombuffer(blob, dtype=np.int8).astype(np.float32) * float(scale)
    else:
        raise GalleryError(f"sample stored with unknown dtype {dtype!r}")
    if vector.size != dim:
        raise GalleryError(f"sample of {vector.size} values but dim {dim}: the gallery is corrupt")
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _friendly(exc: sqlite3.Error, path: Path) -> GalleryError:
    text = str(exc)
    if "disk is full" in text:
        return GalleryError(f"gallery {path}: the disk is full; nothing was written ({text})")
    if "disk I/O" in text:  # also what a write over RLIMIT_FSIZE (EFBIG) gives
        return GalleryError(f"gallery {path}: writing failed: the disk is full, the file is over a size limit "
                            f"or the disk is failing; nothing was written ({text})")
    if "locked" in text or "busy" in text:
        return GalleryError(f"gallery {path}: database stayed locked by another process ({text})")
    if "readonly" in text or "read-only" in text:
        return GalleryError(f"gallery {path}: cannot write (read-only file or directory)")
    if "not a database" in text or "malformed" in text:
        return GalleryError(f"gallery {path}: not a valid SQLite gallery ({text})")
    return GalleryError(f"gallery {path}: {text}")


# Code points that render as nothing (or reorder the text around them) yet are
# not in the categories refused below: Unicode's Default_Ignorable_Code_Point
# set, which also holds letters and marks such as U+3164 HANGUL FILLER, U+034F
# COMBINING GRAPHEME JOINER and the variation selectors.
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
              (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
# Control, format (bidi overrides, zero-width joiners), surrogate, private-use,
# unassigned, line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _canonical_name(name: str) -> str:
    """NFC with single spaces: "Jose" + U+0301 and "José", or "Ada  Lovelace" and "Ada Lovelace", are one name."""
    return " ".join(part for part in unicodedata.normalize("NFC", name).split(" ") if part)


def validate_name(name: str) -> str:
    """A person's name in its canonical form (:func:`_canonical_name`), or GalleryError saying what is wrong.

    Invisible and direction-changing characters, and whitespace other than a
    plain space, are refused: with them two names that look the same on screen
    (or "Alice" and U+202E + "ecilA") would be different people.
    """
    name = _canonical_name(name)
    for char in name:
        category = unicodedata.category(char)
        code = ord(char)
        if (category in _REFUSED_CATEGORIES or (category == "Zs" and char != " ")
                or any(lo <= code <= hi for lo, hi in _IGNORABLE)):
            if category == "Cs":
                why = "is not valid UTF-8 (a file or folder name in another encoding?)"
            elif category in ("Zs", "Zl", "Zp") or char.isspace():
                why = "is whitespace other than a plain space"
            else:
                why = "is an invisible, control or text-direction character"
            label = unicodedata.name(char, "")
            raise InvalidNameError(f"invalid name {name!a}: U+{code:04X}{' ' + label if label else ''} {why}")
    if not name:
        raise InvalidNameError("a person's name cannot be empty")
    if len(name) > 100:
        raise InvalidNameError(f"invalid name {name!r}: at most 100 characters")
    if unicodedata.category(name[0]).startswith("M"):
        raise InvalidNameError(f"invalid name {name!a}: it starts with a combining mark")
    return name


class Gallery:
    """One process's handle on the gallery file; open one per thread."""

    def __init__(self, path: str | Path, create: bool = True, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise GalleryError(f"gallery {self.path} does not exist")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across process crashes in WAL mode; only a power cut
            # can lose the last transaction, which a re-enrollment repairs.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")
            self.db = sqlite_utils.Database(conn)
            if migrations.pending(self.db):
                # Under the write lock: two processes opening an old gallery at once (edge sync and an
                # enrollment) must not both run a migration; the second finds nothing pending.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    migrations.apply(self.db)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise _friendly(exc, self.path) from exc
        except OSError as exc:
            raise GalleryError(f"gallery {self.path}: {exc}") from exc

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------
    def _bump_version(self) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'gallery_version'")

    def _changed(self, person_uuid: str, kind: str, at: float | None = None, unit: str | None = None) -> int:
        """Append to the change sequence (inside the caller's transaction); returns the new seq.

        A local write (``unit`` None) also bumps the person's version and makes this unit its origin:
        that is what a sync publishes. A remote change (``unit`` = the unit it came from) sets the
        version itself (:meth:`put_remote_person`).
        """
        assert kind in CHANGE_KINDS, kind
        if unit is None:
            self.db.execute("UPDATE people SET version = version + 1, origin_unit = NULL WHERE uuid = ?",
                            [person_uuid])
        return self.db.execute("INSERT INTO changes (person_uuid, kind, at, unit) VALUES (?, ?, ?, ?)",
                               [person_uuid, kind, at or time.time(), unit]).lastrowid

    def version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'gallery_version'").fetchone()
        return int(row[0]) if row else 0

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "look again" signal."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def transaction(self, write: bool = True):
        """One all-or-nothing write around several calls (samples of two models and their event).

        Nested calls become savepoints; SQLite errors (disk full, file too
        large, locked, read-only) come out as GalleryError, as from every method.
        ``write=False`` is a consistent read snapshot that takes no write lock.
        """
        return _AtomicWrite(self, write)

    def file_hashes(self) -> dict[str, str]:
        """sha256 -> name for every sample enrolled from a file (``source = "sha256:<hex>:<file name>"``)."""
        with self.transaction(write=False):
            rows = self.db.execute(
                "SELECT s.source, p.name FROM samples s JOIN people p ON p.id = s.person_id "
                "WHERE s.source LIKE 'sha256:%'"
            ).fetchall()
        return {source.split(":")[1]: name for source, name in rows}

    def stored_name(self, name: str) -> str | None:
        """How the gallery spells ``name``: as given, or the same once both are canonical (NFC, single spaces).

        So "Jose" + U+0301 finds "José", and names stored before names were
        normalised are still found; None when no one matches.
        """
        wanted = _canonical_name(name)
        with self.transaction(write=False):
            for candidate in (name, wanted):
                if self.has_person(candidate):
                    return candidate
            for (stored,) in self.db.execute("SELECT name FROM people ORDER BY id").fetchall():
                if _canonical_name(stored) == wanted:
                    return stored
        return None

    def _uuid(self, person_id: int) -> str:
        return self.db.execute("SELECT uuid FROM people WHERE id = ?", [person_id]).fetchone()[0]

    def person_uuid(self, name: str) -> str:
        """The stable id of the person now called ``name``."""
        return self._uuid(self.person_id(name))

    def change_seq(self) -> int:
        """The newest change's sequence number (0 for a gallery nobody has written to)."""
        row = self.db.execute("SELECT MAX(seq) FROM changes").fetchone()
        return row[0] or 0

    def changes(self, after: int = 0, limit: int = 1000) -> list[dict]:
        """Changes with ``seq > after``, oldest first: what a sync publishes."""
        rows = self.db.execute("SELECT seq, person_uuid, kind, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                               [after, limit]).fetchall()
        return [{"seq": r[0], "person_uuid": r[1], "kind": r[2], "at": r[3]} for r in rows]

    def tombstones(self) -> list[dict]:
        rows = self.db.execute("SELECT uuid, removed_at, forgotten FROM tombstones ORDER BY removed_at").fetchall()
        return [{"uuid": r[0], "removed_at": r[1], "forgotten": bool(r[2])} for r in rows]

    def person_id(self, name: str) -> int:
        row = self.db.execute("SELECT id FROM people WHERE name = ?", [name]).fetchone()
        if row is None:
            raise PersonNotFoundError(f"no enrolled person named {name!r}")
        return row[0]

    def has_person(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM people WHERE name = ?", [name]).fetchone() is not None

    # -- writes ----------------------------------------------------------
    def add_samples(
        self,
        name: str,
        embeddings: np.ndarray,
        model_id: str,
        dtype: str = "float32",
        quality: Iterable[float | None] | None = None,
        source: Iterable[str | None] | None = None,
        crops: Iterable[bytes] | None = None,
        capture_ids: Iterable[str] | None = None,
        create: bool = True,
    ) -> int:
        """Add embeddings (and optionally encoded crops) for ``name`` in one transaction."""
        name = validate_name(name)
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        count = len(embeddings)
        quality = list(quality) if quality is not None else [None] * count
        source = list(source) if source is not None else [None] * count
        capture_ids = list(capture_ids) if capture_ids is not None else [uuid.uuid4().hex for _ in range(count)]
        crops = list(crops) if crops is not None else []
        now = time.time()
        with self.transaction():
            row = self.db.execute("SELECT id FROM people WHERE name = ?", [name]).fetchone()
            if row is None:
                if not create:
                    raise PersonNotFoundError(f"no enrolled person named {name!r}")
                person_uuid = uuid.uuid4().hex
                person_id = self.db["people"].insert(
                    {"name": name, "uuid": person_uuid, "created_at": now, "updated_at": now, "version": 0}).last_pk
                self._changed(person_uuid, "created", now)
            else:
                person_id = row[0]
                self.db["people"].update(person_id, {"updated_at": now})
                self._changed(self._uuid(person_id), "samples_added", now)
            records = []
            for vector, q, src, cap in zip(embeddings, quality, source, capture_ids):
                blob, scale = encode_embedding(vector, dtype)
                records.append(
                    {
                        "person_id": person_id, "model_id": model_id, "capture_id": cap, "embedding": blob,
                        "dtype": dtype, "dim": int(vector.size), "scale": scale, "quality": q,
                        "source": src, "created_at": now,
                    }
                )
            self.db["samples"].insert_all(records)
            if crops:
                self.db["crops"].insert_all(
                    {"person_id": person_id, "capture_id": cap, "image": img, "created_at": now}
                    for img, cap in zip(crops, capture_ids)
                )
            self._bump_version()
        return person_id

    def rename(self, old: str, new: str) -> None:
        new = validate_name(new)
        with self.transaction():
            person_id = self.person_id(old)
            if self.has_person(new):
                raise NameTakenError(f"cannot rename {old!r} to {new!r}: that name is taken")
            self.db["people"].update(person_id, {"name": new, "updated_at": time.time()})
            self.db.execute("UPDATE events SET name = ? WHERE person_id = ?", [new, person_id])
            self._changed(self._uuid(person_id), "renamed")
            self._bump_version()

    def remove(self, name: str, forget: bool = False) -> dict[str, int]:
        """Delete a person with their samples and crops; ``forget`` also deletes their events."""
        with self.transaction():
            person_id = self.person_id(name)
            counts = {
                "samples": self.db.execute("DELETE FROM samples WHERE person_id = ?", [person_id]).rowcount,
                "crops": self.db.execute("DELETE FROM crops WHERE person_id = ?", [person_id]).rowcount,
                "events": 0,
            }
            if forget:
                counts["events"] = self.db.execute(
                    "DELETE FROM events WHERE person_id = ? OR name = ?", [person_id, name]
                ).rowcount
            else:
                # Keep the audit trail, but it must not point at a deleted row.
                self.db.execute("UPDATE events SET person_id = NULL WHERE person_id = ?", [person_id])
            person_uuid, now = self._uuid(person_id), time.time()
            version = self.db.execute("SELECT version FROM people WHERE id = ?", [person_id]).fetchone()[0]
            self.db.execute("DELETE FROM people WHERE id = ?", [person_id])
            self.db.execute("INSERT OR REPLACE INTO tombstones (uuid, removed_at, forgotten, version, origin_unit) "
                            "VALUES (?, ?, ?, ?, NULL)", [person_uuid, now, int(forget), version + 1])
            self._changed(person_uuid, "forgotten" if forget else "removed", now)
            self._bump_version()
        return counts

    def import_people(self, people: list[dict], models: dict[str, str], *, merge: bool = False,
                      skip_existing: bool = False, with_crops: bool = True) -> dict[str, int]:
        """Add exported people (see :meth:`snapshot`) in one transaction; returns counts.

        ``models`` maps an exported model id to the id stored here; samples of other models are
        left out and counted.  A name already enrolled aborts everything unless ``merge`` (add the
        samples, a (capture, model) pair already here is skipped) or ``skip_existing``.
        """
        counts = {"people": 0, "new_people": 0, "samples": 0, "crops": 0, "skipped_people": 0, "skipped_samples": 0,
                  "foreign_samples": 0}
        now = time.time()
        with self.transaction():
            conflicts = [p["name"] for p in people if self.has_person(p["name"])]
            if conflicts and not (merge or skip_existing):
                raise NameTakenError(
                    f"already enrolled here: {', '.join(conflicts)}; use --merge (add their samples) or "
                    "--skip-existing. Nothing was imported.")
            for person in people:
                name = validate_name(person["name"])
                row = self.db.execute("SELECT id FROM people WHERE name = ?", [name]).fetchone()
                if row is not None and skip_existing:
                    counts["skipped_people"] += 1
                    continue
                if row is None:
                    # The person keeps their id across units, unless it is somehow taken here.
                    person_uuid = person.get("uuid") or uuid.uuid4().hex
                    # A removed or forgotten id stays dead: an old export must not bring it back across the site.
                    if self.db.execute("SELECT 1 FROM people WHERE uuid = ? UNION SELECT 1 FROM tombstones "
                                       "WHERE uuid = ?", [person_uuid, person_uuid]).fetchone():
                        person_uuid = uuid.uuid4().hex
                    pid = self.db["people"].insert({
                        "name": name, "uuid": person_uuid, "version": 0, "created_at": person.get("created_at") or now,
                        "updated_at": now, "last_seen": person.get("last_seen"), "note": person.get("note")}).last_pk
                    counts["new_people"] += 1
                    have, captures = set(), set()
                else:
                    pid, person_uuid = row[0], self._uuid(row[0])
                    # A capture has one sample per model (two-stage): the pair identifies a sample.
                    have = set(self.db.execute("SELECT capture_id, model_id FROM samples WHERE person_id = ?", [pid]))
                    captures = {capture for capture, _ in have}
                counts["people"] += 1
                for sample in person["samples"]:
                    stored_as = models.get(sample["model_id"])
                    if stored_as is None:
                        counts["foreign_samples"] += 1
                        continue
                    if (sample.get("capture_id"), stored_as) in have:
                        counts["skipped_samples"] += 1
                        continue
                    self.db["samples"].insert({**{k: sample.get(k) for k in SAMPLE_FIELDS}, "person_id": pid,
                                               "model_id": stored_as, "embedding": sample["embedding"]})
                    counts["samples"] += 1
                if with_crops:
                    for crop in person.get("crops", []):
                        if crop.get("capture_id") in captures:
                            continue
                        self.db["crops"].insert({"person_id": pid, "capture_id": crop.get("capture_id"),
                                                 "image": crop["image"], "created_at": crop.get("created_at") or now})
                        counts["crops"] += 1
                self.db["people"].update(pid, {"updated_at": now})
                self._changed(person_uuid, "imported", now)
            self._bump_version()
        return counts

    # -- gallery sync (edge/sync/): a person's state as one record ------------------------------
    def sync_cursor(self) -> int:
        """The newest local change already published (and acknowledged by the broker)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'sync_published_seq'").fetchone()
        return int(row[0]) if row else 0

    def set_sync_cursor(self, seq: int) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('sync_published_seq', ?)", [str(seq)])

    def local_changes(self, after: int = 0, limit: int = 1000) -> list[dict]:
        """This unit's own changes (not those applied from other units) with ``seq > after``, oldest first."""
        rows = self.db.execute("SELECT seq, person_uuid, kind, at FROM changes WHERE seq > ? AND unit IS NULL "
                               "ORDER BY seq LIMIT ?", [after, limit]).fetchall()
        return [{"seq": r[0], "person_uuid": r[1], "kind": r[2], "at": r[3]} for r in rows]

    def pending_local_changes(self, after: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM changes WHERE seq > ? AND unit IS NULL", [after]).fetchone()[0]

    def sync_versions(self) -> dict[str, tuple[str, int, str | None, bool]]:
        """uuid -> (kind "person" or "tombstone", version, origin unit or None for this one, forgotten)."""
        out = {u: ("tombstone", v, o, bool(f)) for u, v, o, f in self.db.execute(
            "SELECT uuid, version, origin_unit, forgotten FROM tombstones")}
        out.update({u: ("person", v, o, False) for u, v, o in self.db.execute(
            "SELECT uuid, version, origin_unit FROM people")})
        return out

    def sync_record(self, person_uuid: str, samples: bool = True) -> dict | None:
        """A person's current state (``kind`` "person", with samples as stored) or their tombstone; None if unknown.

        ``unit`` is the origin of that state: None when this unit wrote it.
        """
        row = self.db.execute("SELECT id, name, version, origin_unit, created_at, updated_at FROM people "
                              "WHERE uuid = ?", [person_uuid]).fetchone()
        if row is not None:
            pid, name, version, origin, created, updated = row
            record = {"kind": "person", "uuid": person_uuid, "name": name, "version": version, "unit": origin,
                      "created_at": created, "updated_at": updated, "samples": []}
            if samples:
                record["samples"] = [dict(zip(("embedding",) + SAMPLE_FIELDS, r)) for r in self.db.execute(
                    "SELECT embedding, " + ", ".join(SAMPLE_FIELDS) + " FROM samples WHERE person_id = ? ORDER BY id",
                    [pid])]
            return record
        row = self.db.execute("SELECT removed_at, forgotten, version, origin_unit FROM tombstones WHERE uuid = ?",
                              [person_uuid]).fetchone()
        if row is not None:
            return {"kind": "tombstone", "uuid": person_uuid, "removed_at": row[0], "forgotten": bool(row[1]),
                    "version": row[2], "unit": row[3]}
        return None

    def put_remote_person(self, record: dict, unit: str, models: dict[str, str]) -> str:
        """Make ``record`` (a verified person state from ``unit``) this person's state; "created" or "updated".

        The samples of the models this unit runs (``models``: their id -> the id stored here) are replaced
        by the record's; kept crops stay.  A name another person holds here raises NameTakenError.
        The caller has decided that the record wins (edge/sync/conflict.py).
        """
        name = validate_name(record["name"])
        now = time.time()
        with self.transaction():
            person_uuid = record["uuid"]
            if self.db.execute("SELECT 1 FROM people WHERE name = ? AND uuid != ?", [name, person_uuid]).fetchone():
                raise NameTakenError(f"{name!r} is another person's name on this unit")
            row = self.db.execute("SELECT id, name FROM people WHERE uuid = ?", [person_uuid]).fetchone()
            fields = {"name": name, "updated_at": now, "version": int(record["version"]), "origin_unit": unit}
            if row is None:
                self.db.execute("DELETE FROM tombstones WHERE uuid = ?", [person_uuid])
                pid = self.db["people"].insert({**fields, "uuid": person_uuid,
                                                "created_at": record.get("created_at") or now}).last_pk
                kind = "created"
            else:
                pid, old_name = row
                self.db["people"].update(pid, fields)
                if old_name != name:
                    self.db.execute("UPDATE events SET name = ? WHERE person_id = ?", [name, pid])
                kind = "updated"
            run_here = sorted(set(models.values()))
            if run_here:
                self.db.execute(f"DELETE FROM samples WHERE person_id = ? AND model_id IN "
                                f"({', '.join('?' * len(run_here))})", [pid, *run_here])
            for sample in record["samples"]:
                stored_as = models.get(sample["model_id"])
                if stored_as is not None:
                    self.db["samples"].insert({**{k: sample.get(k) for k in SAMPLE_FIELDS}, "person_id": pid,
                                               "model_id": stored_as, "embedding": sample["embedding"]})
            self._changed(person_uuid, kind, now, unit=unit)
            self._bump_version()
        return kind

    def put_remote_tombstone(self, person_uuid: str, *, version: int, unit: str, forgotten: bool,
                             removed_at: float | None = None) -> dict[str, int]:
        """Remove (or forget: events too) the person ``unit`` removed; records the tombstone; returns counts.

        The caller VACUUMs after a forget (:meth:`vacuum`), so the embedding bytes leave the file.
        """
        counts = {"samples": 0, "crops": 0, "events": 0}
        now = time.time()
        with self.transaction():
            row = self.db.execute("SELECT id, name FROM people WHERE uuid = ?", [person_uuid]).fetchone()
            if row is not None:
                pid, name = row
                counts["samples"] = self.db.execute("DELETE FROM samples WHERE person_id = ?", [pid]).rowcount
                counts["crops"] = self.db.execute("DELETE FROM crops WHERE person_id = ?", [pid]).rowcount
                if forgotten:
                    counts["events"] = self.db.execute("DELETE FROM events WHERE person_id = ? OR name = ?",
                                                       [pid, name]).rowcount
                else:
                    self.db.execute("UPDATE events SET person_id = NULL WHERE person_id = ?", [pid])
                self.db.execute("DELETE FROM people WHERE id = ?", [pid])
            self.db.execute("INSERT OR REPLACE INTO tombstones (uuid, removed_at, forgotten, version, origin_unit) "
                            "VALUES (?, ?, ?, ?, ?)", [person_uuid, removed_at or now, int(forgotten), int(version), unit])
            self._changed(person_uuid, "forgotten" if forgotten else "removed", now, unit=unit)
            self._bump_version()
        return counts

    def adopt_model_id(self, legacy: str, current: str) -> int:
        """Relabel samples recorded under a bundle's legacy id (file sha256 only) with its current id.

        Galleries enrolled before the input spec was part of the model id keep
        working without re-enrollment; the caller has verified the bundle.
        """
        if legacy == current:
            return 0
        with self.transaction():
            moved = self.db.execute("UPDATE samples SET model_id = ? WHERE model_id = ?", [current, legacy]).rowcount
            if moved:
                self._bump_version()
        if moved:
            log.info("gallery %s: %d samples of %s now recorded as %s (manifest-covering model id)",
                     self.path, moved, legacy, current)
        return moved

    def vacuum(self) -> None:
        """Rewrite the file so deleted rows are gone from disk, WAL included."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise _friendly(exc, self.path) from exc

    def touch_seen(self, person_id: int, ts: float | None = None) -> None:
        with self.transaction():
            self.db.execute("UPDATE people SET last_seen = ? WHERE id = ?", [ts or time.time(), person_id])

    def log_event(self, kind: str, *, name: str | None = None, person_id: int | None = None,
                  distance: float | None = None, frames: int | None = None, model_id: str | None = None,
                  detail: dict | None = None, ts: float | None = None) -> int:
        with self.transaction():
            return self.db["events"].insert(
                {
                    "ts": ts or time.time(), "kind": kind, "person_id": person_id, "name": name,
                    "distance": distance, "frames": frames, "model_id": model_id,
                    "detail": json.dumps(detail) if detail else None,
                }
            ).last_pk

    # -- reads -----------------------------------------------------------
    def people(self) -> list[PersonSummary]:
        rows = self.db.execute(
            """
            SELECT p.id, p.name, p.uuid, p.created_at, p.last_seen,
                   (SELECT COUNT(*) FROM samples s WHERE s.person_id = p.id),
                   (SELECT GROUP_CONCAT(DISTINCT s.model_id) FROM samples s WHERE s.person_id = p.id),
                   (SELECT COUNT(*) FROM crops c WHERE c.person_id = p.id)
            FROM people p ORDER BY p.name
            """
        ).fetchall()
        return [
            PersonSummary(id=r[0], name=r[1], uuid=r[2], created_at=r[3], last_seen=r[4], samples=r[5],
                          models=tuple(sorted((r[6] or "").split(","))) if r[6] else (), crops=r[7])
            for r in rows
        ]

    def model_counts(self) -> dict[str, int]:
        return {m: c for m, c in self.db.execute("SELECT model_id, COUNT(*) FROM samples GROUP BY model_id")}

    def matrix(self, model_id: str) -> GalleryMatrix:
        """All samples embedded with ``model_id`` as one unit-norm matrix, read in one snapshot."""
        with self.transaction(write=False):
            version = self.version()
            rows = self.db.execute(
                "SELECT s.person_id, p.name, s.embedding, s.dtype, s.dim, s.scale FROM samples s "
                "JOIN people p ON p.id = s.person_id WHERE s.model_id = ? ORDER BY s.person_id, s.id",
                [model_id],
            ).fetchall()
        if not rows:
            return GalleryMatrix(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), {}, version)
        embeddings = np.stack([decode_embedding(r[2], r[3], r[4], r[5]) for r in rows]).astype(np.float32)
        person_ids = np.array([r[0] for r in rows], dtype=np.int64)
        names = {r[0]: r[1] for r in rows}
        return GalleryMatrix(embeddings, person_ids, names, version)

    def snapshot(self, names: list[str] | None = None, crops: bool = False) -> list[dict]:
        """People (all, or those named) with their samples as stored and, if asked, their crops; one read."""
        with self.transaction(write=False):
            rows = self.db.execute(
                "SELECT id, name, uuid, created_at, updated_at, last_seen, note FROM people ORDER BY name").fetchall()
            people = []
            for pid, name, person_uuid, created, updated, last_seen, note in rows:
                if names and name not in names:
                    continue
                samples = [dict(zip(("embedding",) + SAMPLE_FIELDS, r)) for r in self.db.execute(
                    "SELECT embedding, " + ", ".join(SAMPLE_FIELDS) + " FROM samples WHERE person_id = ? ORDER BY id",
                    [pid])]
                kept = [{"capture_id": c, "image": image, "created_at": t} for c, image, t in self.db.execute(
                    "SELECT capture_id, image, created_at FROM crops WHERE person_id = ? ORDER BY id", [pid])
                ] if crops else []
                people.append({"name": name, "uuid": person_uuid, "created_at": created, "updated_at": updated,
                               "last_seen": last_seen, "note": note, "samples": samples, "crops": kept})
        return people

    def crops_for(self, name: str) -> list[tuple[str, bytes]]:
        person_id = self.person_id(name)
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT capture_id, image FROM crops WHERE person_id = ? ORDER BY id", [person_id])]

    def events(self, limit: int = 50, kind: str | None = None, name: str | None = None,
               since: float | None = None, after_id: int | None = None) -> list[dict]:
        clauses, params = [], []
        if kind:
            clauses.append("kind = ?")
            params.append(kind)
        if name:
            clauses.append("name = ?")
            params.append(name)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.execute(
            f"SELECT * FROM (SELECT * FROM events {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            params + [limit],
        )
        columns = [c[0] for c in rows.description]
        return [dict(zip(columns, row)) for row in rows.fetchall()]


class _AtomicWrite:
    """``db.atomic()`` plus translation of SQLite errors into GalleryError."""

    def __init__(self, gallery: Gallery, write: bool = True) -> None:
        self.gallery = gallery
        self.write = write
        self._cm = None
        self._own = False

    def __enter__(self):
        conn = self.gallery.db.conn
        try:
            if self.write and not conn.in_transaction:
                # IMMEDIATE takes the write lock up front, waiting busy_timeout for it.  A deferred
                # BEGIN that reads first fails at once with "database is locked" when another
                # connection (the recognizer's audit writes) committed in between (SQLITE_BUSY_SNAPSHOT).
                conn.execute("BEGIN IMMEDIATE")
                self._own = True
                return self.gallery.db
            self._cm = self.gallery.db.atomic()
            return self._cm.__enter__()
        except sqlite3.Error as exc:
            raise _friendly(exc, self.gallery.path) from exc

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._own:
                conn = self.gallery.db.conn
                if exc_type is None:
                    conn.execute("COMMIT")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
                suppressed = False
            else:
                suppressed = self._cm.__exit__(exc_type, exc, tb)
        except sqlite3.Error as err:
            if self._own and self.gallery.db.conn.in_transaction:
                self.gallery.db.conn.execute("ROLLBACK")
            raise _friendly(err, self.gallery.path) from err
        if isinstance(exc, sqlite3.Error):
            raise _friendly(exc, self.gallery.path) from exc
        return suppressed
