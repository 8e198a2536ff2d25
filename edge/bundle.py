"""Model bundles: a model file plus a manifest that says what it is and how to feed it.

A bundle is a folder holding ``manifest.json`` and the file it names.  Loading
checks the file's sha256 against the manifest before anything else touches it:
a door unit refuses a tampered or half-copied model instead of running it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, ModelIntegrityError

MANIFEST_NAME = "manifest.json"
FORMAT = "edge-model-bundle/1"
KINDS = ("embedder", "detector")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest["file"]

    @property
    def model_id(self) -> str:
        """What a gallery records: embeddings from different files never mix."""
        return f"{self.name}:{self.sha256[:16]}"

    @property
    def threshold(self) -> float | None:
        tuned = self.manifest.get("threshold") or {}
        value = tuned.get("l2")
        return None if value is None else float(value)

    @property
    def input_spec(self) -> dict[str, Any]:
        return self.manifest.get("input", {})

    @property
    def embedding_size(self) -> int | None:
        return self.manifest.get("embedding_size")


_REQUIRED = ("format", "name", "version", "kind", "file", "sha256", "licence")


def read_manifest(root: Path) -> dict[str, Any]:
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelError(f"model bundle {root}: no {MANIFEST_NAME} (is this a model bundle folder?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model bundle {root}: unreadable {MANIFEST_NAME}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"model bundle {root}: {MANIFEST_NAME} is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ModelError(f"model bundle {root}: manifest lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ModelError(f"model bundle {root}: format {manifest['format']!r}, expected {FORMAT!r}")
    if manifest["kind"] not in KINDS:
        raise ModelError(f"model bundle {root}: kind {manifest['kind']!r} is not one of {KINDS}")
    if Path(manifest["file"]).name != manifest["file"]:
        raise ModelError(f"model bundle {root}: 'file' must be a plain file name inside the bundle")
    return manifest


def load_bundle(root: str | Path, expect_kind: str | None = None) -> Bundle:
    """Read and verify a bundle; raises ModelIntegrityError on a sha256 mismatch."""
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"model bundle {root} does not exist")
    manifest = read_manifest(root)
    if expect_kind and manifest["kind"] != expect_kind:
        raise ModelError(f"model bundle {root} is a {manifest['kind']}, expected a {expect_kind}")
    model_path = root / manifest["file"]
    if not model_path.is_file():
        raise ModelError(f"model bundle {root}: model file {manifest['file']} is missing")
    actual = sha256_file(model_path)
    if actual != manifest["sha256"]:
        raise ModelIntegrityError(
            f"model {model_path} fails its integrity check: sha256 {actual} but the manifest says "
            f"{manifest['sha256']}; the file was modified or copied incompletely. Reinstall the bundle."
        )
    return Bundle(root=root, manifest=manifest)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write a manifest atomically (temp file + rename), filling sha256 and size from the file."""
    model_path = root / manifest["file"]
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["sha256"] = sha256_file(model_path)
    manifest["size_bytes"] = model_path.stat().st_size
    target = root / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
