"""Export and import the gallery as one checksummed file (moving people between door units).

File layout::

    EDGE-GALLERY-EXPORT 1\\n
    {"sha256": "<hex of the payload>", "bytes": N, "models": [...], "people": P, "samples": S, "crops": bool}\\n
    <payload: gzip-compressed JSON with people, their samples (embeddings as stored) and optional crops>

Export writes a temporary file next to the target, fsyncs and renames it.
Import checks the magic line, the byte count and the sha256 of the payload,
refuses samples of a model other than this unit's embedder, and writes
everything in one transaction (a name conflict aborts the whole import unless
``merge`` or ``skip_existing`` is chosen).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from ..gallery import Gallery, decode_embedding, validate_name
from .errors import TransferError

MAGIC = b"EDGE-GALLERY-EXPORT 1\n"
FORMAT = "edge-gallery/1"
SAMPLE_FIELDS = ("model_id", "capture_id", "dtype", "dim", "scale", "quality", "source", "created_at")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def export_gallery(gallery: Gallery, target: Path, *, names: list[str] | None = None, crops: bool = False) -> dict:
    """Write people + samples (+ crops) to ``target`` atomically; returns the header."""
    target = Path(target)
    with gallery._transaction():  # one consistent snapshot
        people_rows = gallery.db.execute(
            "SELECT id, name, created_at, updated_at, last_seen, note FROM people ORDER BY name").fetchall()
        people = []
        for pid, name, created, updated, last_seen, note in people_rows:
            if names and name not in names:
                continue
            samples = [
                dict(zip(("embedding",) + SAMPLE_FIELDS, (_b64(r[0]),) + tuple(r[1:])))
                for r in gallery.db.execute(
                    "SELECT embedding, " + ", ".join(SAMPLE_FIELDS) + " FROM samples WHERE person_id = ? ORDER BY id",
                    [pid])
            ]
            person = {"name": name, "created_at": created, "updated_at": updated, "last_seen": last_seen,
                      "note": note, "samples": samples, "crops": []}
            if crops:
                person["crops"] = [{"capture_id": c, "image": _b64(img), "created_at": t} for c, img, t in
                                   gallery.db.execute("SELECT capture_id, image, created_at FROM crops "
                                                      "WHERE person_id = ? ORDER BY id", [pid])]
            people.append(person)
    if names:
        missing = sorted(set(names) - {p["name"] for p in people})
        if missing:
            raise TransferError(f"not enrolled: {', '.join(missing)}")
    models = sorted({s["model_id"] for p in people for s in p["samples"]})
    payload = gzip.compress(json.dumps({"format": FORMAT, "exported_at": time.time(), "models": models,
                                        "people": people}).encode(), mtime=0)
    header = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "models": models,
              "people": len(people), "samples": sum(len(p["samples"]) for p in people), "crops": crops}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + json.dumps(header).encode() + b"\n" + payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # embeddings are biometric data
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return header


def read_export(path: Path) -> tuple[dict, dict]:
    """(header, document) of an export file, after every integrity check."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not data.startswith(MAGIC):
        raise TransferError(f"{path}: not an edge gallery export (bad magic line)")
    try:
        header_line, payload = data[len(MAGIC):].split(b"\n", 1)
        header = json.loads(header_line)
    except ValueError as exc:
        raise TransferError(f"{path}: corrupt header") from exc
    if len(payload) != header.get("bytes"):
        raise TransferError(f"{path}: truncated or padded: {len(payload)} payload bytes, header says {header.get('bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise TransferError(f"{path}: checksum mismatch: the file is corrupt; nothing was imported")
    try:
        document = json.loads(gzip.decompress(payload))
    except (OSError, ValueError) as exc:
        raise TransferError(f"{path}: payload does not decode: {exc}") from exc
    if document.get("format") != FORMAT:
        raise TransferError(f"{path}: unsupported format {document.get('format')!r}")
    return header, document


def model_map(bundles) -> dict[str, str]:
    """Exported model id -> the id stored here, for the bundles this unit runs (main model first).

    Legacy ids (exports from before manifest sealing) map to the bundle's current id.
    """
    mapping: dict[str, str] = {}
    for bundle in bundles:
        mapping[bundle.model_id] = bundle.model_id
        mapping.setdefault(bundle.legacy_model_id, bundle.model_id)
    return mapping


def import_gallery(gallery: Gallery, source: Path, models: dict[str, str], *, merge: bool = False,
                   skip_existing: bool = False, with_crops: bool = True) -> dict:
    """Import an export file into ``gallery`` in one transaction; returns counts.

    ``models`` (see :func:`model_map`): the first entry is this unit's main model.  Samples of
    another model this unit runs (the two-stage confirmer) come along; samples of models it does
    not run are left out and counted, and an export without the main model is refused.
    """
    from ..matcher import check_gallery_model

    _, document = read_export(source)
    model_id = next(iter(models.values()))
    exported = set(document.get("models", [])) | {s["model_id"] for p in document["people"] for s in p["samples"]}
    if not any(models.get(m) == model_id for m in exported):
        raise TransferError(
            f"{source}: exported with {', '.join(sorted(exported)) or 'no model'}, but this unit runs {model_id}; "
            "embeddings of different models cannot be compared. Nothing was imported.")
    legacy = [m for m, current in models.items() if current == model_id and m != model_id]
    check_gallery_model(gallery, model_id, legacy[0] if legacy else None)
    counts = {"people": 0, "new_people": 0, "samples": 0, "crops": 0, "skipped_people": 0, "skipped_samples": 0,
              "foreign_samples": 0}
    now = time.time()
    with gallery._transaction():
        conflicts = [p["name"] for p in document["people"] if gallery.has_person(p["name"])]
        if conflicts and not (merge or skip_existing):
            raise TransferError(
                f"already enrolled here: {', '.join(conflicts)}; use --merge (add their samples) or "
                "--skip-existing. Nothing was imported.")
        for person in document["people"]:
            name = validate_name(person["name"])
            row = gallery.db.execute("SELECT id FROM people WHERE name = ?", [name]).fetchone()
            if row is not None and skip_existing:
                counts["skipped_people"] += 1
                continue
            if row is None:
                pid = gallery.db["people"].insert({
                    "name": name, "created_at": person.get("created_at") or now, "updated_at": now,
                    "last_seen": person.get("last_seen"), "note": person.get("note")}).last_pk
                counts["new_people"] += 1
                have, captures = set(), set()
            else:
                pid = row[0]
                # A capture has one sample per model (two-stage): the pair identifies a sample.
                have = set(gallery.db.execute("SELECT capture_id, model_id FROM samples WHERE person_id = ?", [pid]))
                captures = {capture for capture, _ in have}
            counts["people"] += 1
            for s in person["samples"]:
                stored_as = models.get(s["model_id"])
                if stored_as is None:
                    counts["foreign_samples"] += 1
                    continue
                if (s.get("capture_id"), stored_as) in have:
                    counts["skipped_samples"] += 1
                    continue
                blob = base64.b64decode(s["embedding"])
                try:
                    decode_embedding(blob, s["dtype"], int(s["dim"]), s.get("scale"))
                except Exception as exc:
                    raise TransferError(f"{source}: a sample of {name} does not decode ({exc}); nothing imported") from exc
                record = {k: s.get(k) for k in SAMPLE_FIELDS}
                record.update(person_id=pid, embedding=blob, model_id=stored_as)
                gallery.db["samples"].insert(record)
                counts["samples"] += 1
            if with_crops:
                for c in person.get("crops", []):
                    if c.get("capture_id") in captures:
                        continue
                    gallery.db["crops"].insert({"person_id": pid, "capture_id": c.get("capture_id"),
                                                "image": base64.b64decode(c["image"]),
                                                "created_at": c.get("created_at") or now})
                    counts["crops"] += 1
            gallery.db["people"].update(pid, {"updated_at": now})
        gallery._bump_version()
    gallery.log_event("imported", detail={"file": str(source), **counts}, model_id=model_id)
    return counts
