"""Bulk enrollment from image files: ``edge enroll files NAME IMG...`` and ``edge enroll folder DIR``.

The same quality gates and identity checks as live enrollment, applied per
file, with a per-file report.  Re-runs are idempotent: each sample records the
sha256 of the file it came from (``source = "sha256:<hex>:<file name>"``), and
a file whose content is already in the gallery is skipped.  Each person's
accepted files are written in one transaction.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ImageError
from ..bundle import sha256_file
from ..enroll import add_companion_samples
from ..gallery import Gallery, validate_name
from ..images import IMAGE_SUFFIXES, load_image
from ..enroll import png_bytes
from .quality import Reason, SessionGuard, Thresholds, assess


@dataclass
class FileResult:
    person: str
    path: str
    status: str  # accepted | rejected | skipped | error
    reason: str = ""
    codes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"person": self.person, "file": self.path, "status": self.status, "reason": self.reason,
                "codes": list(self.codes)}


@dataclass
class PersonReport:
    name: str
    files: list[FileResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    added: int = 0


def enrolled_hashes(gallery: Gallery) -> dict[str, str]:
    """sha256 -> name of every file-sourced sample in the gallery."""
    rows = gallery.db.execute(
        "SELECT s.source, p.name FROM samples s JOIN people p ON p.id = s.person_id WHERE s.source LIKE 'sha256:%'"
    ).fetchall()
    return {src.split(":")[1]: name for src, name in rows}


def folder_people(root: Path) -> list[tuple[str, list[Path]]]:
    """One sub-folder per person (``Ada_Lovelace/`` -> "Ada Lovelace"), images inside it."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root} is not a folder")
    people = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        people.append((folder.name.replace("_", " ").strip(), images))
    return people


class BulkEnroller:
    def __init__(self, gallery: Gallery, detector, embedder, threshold: float, config, *,
                 keep_crops: bool = False, allow_lookalike: bool = False, dry_run: bool = False,
                 on_file: Callable[[FileResult], None] | None = None, companions=()) -> None:
        from ..matcher import check_gallery_model

        check_gallery_model(gallery, embedder.model_id)
        self.gallery = gallery
        self.detector = detector
        self.embedder = embedder
        self.threshold = threshold
        self.config = config
        self.t = Thresholds.from_config(config.enrollment)
        self.keep_crops = keep_crops
        self.allow_lookalike = allow_lookalike
        self.dry_run = dry_run
        self.on_file = on_file or (lambda r: None)
        self.companions = list(companions)

    def enroll(self, name: str, paths: Sequence[Path]) -> PersonReport:
        name = validate_name(name)
        report = PersonReport(name)
        known = enrolled_hashes(self.gallery)
        guard = SessionGuard(name, self.gallery.matrix(self.embedder.model_id), self.threshold, self.t,
                             self.allow_lookalike)
        seen: dict[str, str] = {}
        accepted: list[tuple[np.ndarray, float, str, np.ndarray]] = []

        def done(result: FileResult) -> None:
            report.files.append(result)
            self.on_file(result)

        for path in paths:
            path = Path(path)
            try:
                digest = sha256_file(path)
            except OSError as exc:
                done(FileResult(name, str(path), "error", f"cannot read: {exc.strerror or exc}"))
                continue
            if digest in known:
                owner = known[digest]
                if owner == name:
                    done(FileResult(name, str(path), "skipped", "already enrolled (same file content)"))
                else:
                    done(FileResult(name, str(path), "rejected", f"this exact file is already enrolled as {owner}",
                                    ("other_person",)))
                continue
            if digest in seen:
                done(FileResult(name, str(path), "skipped", f"same content as {seen[digest]}"))
                continue
            seen[digest] = path.name
            try:
                image = load_image(path)
            except ImageError as exc:
                done(FileResult(name, str(path), "error", str(exc)))
                continue
            assessment = assess(image, self.detector.detect_image(image), self.t, live=False,
                                crop_size=self.embedder.input_size)
            reasons: list[Reason] = assessment.reasons
            if assessment.ok:
                embedding = self.embedder.embed_one(assessment.crop)
                verdict = guard.check(embedding)
                report.warnings.extend(verdict.warnings)
                reasons = list(verdict.reasons)
                if verdict.ok:
                    guard.accept(embedding)
                    accepted.append((embedding, assessment.face.score, f"sha256:{digest}:{path.name}", assessment.crop))
                    done(FileResult(name, str(path), "accepted"))
                    continue
            done(FileResult(name, str(path), "rejected", "; ".join(r.message for r in reasons),
                            tuple(r.code for r in reasons)))
        if accepted and not self.dry_run:
            capture_ids = [uuid.uuid4().hex for _ in accepted]
            dtype = self.config.gallery.embedding_dtype
            with self.gallery.db.atomic():
                person_id = self.gallery.add_samples(
                    name, np.stack([a[0] for a in accepted]), self.embedder.model_id, dtype=dtype,
                    quality=[a[1] for a in accepted], source=[a[2] for a in accepted], capture_ids=capture_ids,
                    crops=[png_bytes(a[3]) for a in accepted] if self.keep_crops else None,
                )
                add_companion_samples(self.gallery, name, [a[3] for a in accepted], capture_ids,
                                      self.companions, dtype)
            self.gallery.log_event("enrolled", name=name, person_id=person_id, model_id=self.embedder.model_id,
                                   detail={"samples": len(accepted), "via": "files", "at": time.time()})
        report.added = len(accepted)
        return report

    def enroll_many(self, people: Iterable[tuple[str, Sequence[Path]]]) -> list[PersonReport]:
        return [self.enroll(name, paths) for name, paths in people]
