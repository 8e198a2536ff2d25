"""Model bundles: a model file plus a manifest that says what it is and how to feed it.

A bundle is a folder holding ``manifest.json`` and the file it names.  Loading
checks the file's sha256 against the manifest before anything else touches it:
a door unit refuses a tampered or half-copied model instead of running it.

The manifest is part of the model: its threshold and input normalisation decide
who is let in as much as the weights do.  It carries ``manifest_sha256``, the
digest of its own canonical JSON, so a hand edit is refused like an edited model
file; every tool writes manifests through :func:`write_manifest`, which seals
them.  The ``model_id`` a gallery records covers the file *and* the input spec,
so a re-sealed manifest that feeds the model differently never meets embeddings
it did not make.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, ModelIntegrityError

MANIFEST_NAME = "manifest.json"
FORMAT = "edge-model-bundle/1"
KINDS = ("embedder", "detector", "liveness")
# Bundles written before manifests named their backend: what ran them then.
DEFAULT_BACKENDS = {"embedder": "tflite", "detector": "opencv-yunet", "liveness": "tflite"}
SEAL = "manifest_sha256"
_MODEL_ID_VERSION = "edge-model-id/2"


def _is_distance(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 2


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
        """What a gallery records: embeddings of different files or input specs never mix."""
        return f"{self.name}:{embedding_identity(self.manifest)[:16]}"

    @property
    def legacy_model_id(self) -> str:
        """The id galleries recorded before the input spec was part of it (file sha256 only)."""
        return f"{self.name}:{self.sha256[:16]}"

    @property
    def threshold(self) -> float | None:
        value = self._tuning.get("l2")
        if value is None:
            return None
        if not _is_distance(value):
            raise ModelError(f"model bundle {self.root}: threshold.l2 {value!r} is not an L2 distance in (0, 2]")
        return float(value)

    @property
    def threshold_range(self) -> tuple[float, float] | None:
        """The L2 thresholds the bundle's tuning measured a false-accept rate for (lowest, highest)."""
        span = self._tuning.get("supported_l2")
        if span is None:
            tuned = self.threshold
            return None if tuned is None else (tuned, tuned)
        if not (isinstance(span, list) and len(span) == 2 and all(map(_is_distance, span)) and span[0] <= span[1]):
            raise ModelError(f"model bundle {self.root}: threshold.supported_l2 {span!r} is not [low, high]")
        return float(span[0]), float(span[1])

    @property
    def _tuning(self) -> dict[str, Any]:
        tuned = self.manifest.get("threshold") or {}
        if not isinstance(tuned, dict):
            raise ModelError(f"model bundle {self.root}: 'threshold' is not a table")
        return tuned

    @property
    def backend(self) -> str:
        """The registered backend that runs this bundle (``edge.detectors`` / ``edge.embedders``)."""
        return self.manifest.get("backend") or DEFAULT_BACKENDS[self.kind]

    @property
    def input_spec(self) -> dict[str, Any]:
        return self.manifest.get("input", {})

    @property
    def embedding_size(self) -> int | None:
        return self.manifest.get("embedding_size")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own seal."""
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != SEAL})).hexdigest()


def embedding_identity(manifest: dict[str, Any]) -> str:
    """Digest of everything an embedding depends on: the model file and how its input is prepared."""
    covered = {
        "version": _MODEL_ID_VERSION, "sha256": manifest["sha256"], "kind": manifest["kind"],
        "input": manifest.get("input", {}), "embedding_size": manifest.get("embedding_size"),
    }
    return hashlib.sha256(canonical_json(covered)).hexdigest()


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
    if not isinstance(manifest["file"], str) or Path(manifest["file"]).name != manifest["file"]:
        raise ModelError(f"model bundle {root}: 'file' must be a plain file name inside the bundle")
    return manifest


def verify_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest whose content no longer matches its seal (edited by hand, or truncated)."""
    sealed = manifest.get(SEAL)
    if not isinstance(sealed, str):
        raise ModelIntegrityError(
            f"model bundle {root}: {MANIFEST_NAME} has no {SEAL} seal, so its threshold and input settings "
            "cannot be trusted; rebuild the bundle with edge-model (convert/tune seal what they write)"
        )
    actual = manifest_digest(manifest)
    if actual != sealed:
        raise ModelIntegrityError(
            f"model bundle {root}: {MANIFEST_NAME} fails its integrity check (content sha256 {actual[:16]}..., "
            f"sealed {sealed[:16]}...): it was edited by hand or copied incompletely. Its threshold and input "
            "normalisation decide who is let in, so it is refused like a modified model; reinstall the bundle, "
            "or change thresholds in the config (decision.threshold) or with edge-model tune."
        )


def load_bundle(root: str | Path, expect_kind: str | None = None) -> Bundle:
    """Read and verify a bundle; raises ModelIntegrityError on a sha256 mismatch."""
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"model bundle {root} does not exist")
    manifest = read_manifest(root)
    verify_manifest(root, manifest)
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
    """Write a manifest atomically (temp file + rename), filling sha256, size and the seal."""
    model_path = root / manifest["file"]
    manifest = {k: v for k, v in manifest.items() if k != SEAL}
    manifest["format"] = FORMAT
    manifest["sha256"] = sha256_file(model_path)
    manifest["size_bytes"] = model_path.stat().st_size
    # Round-trip first so the seal is computed over exactly what a reader will parse (floats, tuples).
    manifest = json.loads(json.dumps(manifest))
    manifest[SEAL] = manifest_digest(manifest)
    target = root / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
