"""Export and import the gallery as one checksummed file (moving people between door units).

File layout::

    EDGE-GALLERY-EXPORT 1\\n
    {"sha256": "<hex of the payload>", "bytes": N, "models": [...], "people": P, "samples": S, "crops": bool}\\n
    <payload: gzip-compressed JSON with people, their samples (embeddings as stored) and optional crops>

Export writes a temporary file next to the target, fsyncs and renames it.
Import checks the magic line, the byte count and the sha256 of the payload,
imports the samples of the models this unit runs (others are left out and counted), and writes
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

from ..gallery import Gallery, decode_embedding
from .errors import TransferError

MAGIC = b"EDGE-GALLERY-EXPORT 1\n"
FORMAT = "edge-gallery/1"
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def export_gallery(gallery: Gallery, target: Path, *, names: list[str] | None = None, crops: bool = False) -> dict:
    """Write people + samples (+ crops) to ``target`` atomically; returns the header."""
    target = Path(target)
    people = [
        {**person, "samples": [{**s, "embedding": _b64(s["embedding"])} for s in person["samples"]],
         "crops": [{**c, "image": _b64(c["image"])} for c in person["crops"]]}
        for person in gallery.snapshot(names, crops)
    ]
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
    people = []
    for person in document["people"]:
        samples = []
        for sample in person["samples"]:
            blob = base64.b64decode(sample["embedding"])
            try:  # every sample proven decodable before anything is written
                decode_embedding(blob, sample["dtype"], int(sample["dim"]), sample.get("scale"))
            except Exception as exc:
                raise TransferError(f"{source}: a sample of {person.get('name')!r} does not decode ({exc}); "
                                    "nothing imported") from exc
            samples.append({**sample, "embedding": blob})
        people.append({**person, "samples": samples,
                       "crops": [{**c, "image": base64.b64decode(c["image"])} for c in person.get("crops", [])]})
    counts = gallery.import_people(people, models, merge=merge, skip_existing=skip_existing, with_crops=with_crops)
    gallery.log_event("imported", detail={"file": str(source), **counts}, model_id=model_id)
    return counts
