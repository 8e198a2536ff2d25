"""Bulk enrollment from image files: ``edge enroll files NAME IMG...`` and ``edge enroll folder DIR``.

The same quality gates and identity checks as live enrollment, applied per
file, with a per-file report.  Re-runs are idempotent: each sample records the
sha256 of the file it came from (``source = "sha256:<hex>:<file name>"``), and
a file whose content is already in the gallery is skipped.  Each person's
accepted files (and their "enrolled" event) are written in one transaction.

A bad person (an invalid name) or a bad file is reported and skipped; the run
goes on with the others.  Only a failed write (disk full, read-only gallery)
stops it, since every later write would fail the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .store import store_captures
from ..errors import GalleryError, ImageError
from ..gallery import Gallery, validate_name
from ..images import IMAGE_SUFFIXES, decode_image, read_regular_file
from .quality import Reason, SessionGuard, Thresholds, assess

log = logging.getLogger(__name__)


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
    error: str = ""  # why nothing of this person was enrolled: an invalid name, a failed write
    write_error: GalleryError | None = None  # the gallery refused the write; later people would fail too

    @property
    def ok(self) -> bool:
        """This person is in the gallery now (added or already there), or would be in a dry run."""
        return not self.error and any(f.status in ("accepted", "skipped") for f in self.files)


def shown_name(name: str) -> str:
    """A name as it can be printed in a one-line report: control and non-ASCII characters escaped."""
    return ascii(name)[1:-1]


def folder_people(root: Path) -> list[tuple[str, list[Path], Path]]:
    """One sub-folder per person (``Ada_Lovelace/`` -> "Ada Lovelace"): (name, images inside it, folder).

    The name is only the folder's; :meth:`BulkEnroller.enroll` validates it, so
    a bad one is reported without stopping the others.  Entries with an image
    suffix that are not regular files (a FIFO, a link to a device) are listed
    too, to be reported rather than silently left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root} is not a folder")
    people = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        people.append((folder.name.replace("_", " "), images, folder))
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

    def enroll(self, name: str, paths: Sequence[Path], folder: Path | None = None) -> PersonReport:
        """Check and enroll one person's files; problems end up in the report, never raised."""
        try:
            name = validate_name(name)
        except GalleryError as exc:
            return self._refused(shown_name(name), paths, folder, str(exc))
        report = PersonReport(name)

        def done(result: FileResult) -> None:
            report.files.append(result)
            self.on_file(result)

        if not paths:
            done(FileResult(name, str(folder or ""), "error",
                            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))})", ("no_images",)))
            report.error = "no image files"
            return report
        # A gallery written before names were normalised may spell this person
        # differently (decomposed accents): the identity checks must see them as one.
        stored = self.gallery.stored_name(name) or name
        known = self.gallery.file_hashes()
        guard = SessionGuard(stored, self.gallery.matrix(self.embedder.model_id), self.threshold, self.t,
                             self.allow_lookalike)
        seen: dict[str, str] = {}
        accepted: list[tuple[np.ndarray, float, str, np.ndarray]] = []
        accepted_results: list[FileResult] = []

        for path in paths:
            path = Path(path)
            try:
                # Read once: the bytes hashed are the bytes decoded.
                data = read_regular_file(path)
            except ImageError as exc:
                done(FileResult(name, str(path), "error", str(exc)))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in known:
                owner = known[digest]
                if owner == stored:
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
                image = decode_image(data, str(path))
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
                    result = FileResult(name, str(path), "accepted")
                    accepted_results.append(result)
                    done(result)
                    continue
            done(FileResult(name, str(path), "rejected", "; ".join(r.message for r in reasons),
                            tuple(r.code for r in reasons)))
        if accepted and not self.dry_run:
            try:
                self._write(name, stored, accepted)
            except GalleryError as exc:
                log.info("enrolling %s: %s", name, exc)
                for result in accepted_results:
                    result.status, result.reason, result.codes = "error", f"not saved: {exc}", ("not_saved",)
                report.error, report.write_error = str(exc), exc
                return report
        report.added = len(accepted)
        return report

    def _refused(self, name: str, paths: Sequence[Path], folder: Path | None, reason: str) -> PersonReport:
        report = PersonReport(name, error=reason)
        for path in paths or [folder or ""]:
            result = FileResult(name, str(path), "error", f"person not enrolled: {reason}", ("invalid_name",))
            report.files.append(result)
            self.on_file(result)
        return report

    def _write(self, name: str, stored: str, accepted: list) -> None:
        with self.gallery.transaction():
            if stored != name:
                self.gallery.rename(stored, name)  # the canonical spelling from now on
            person_id = store_captures(
                self.gallery, name, [a[3] for a in accepted], np.stack([a[0] for a in accepted]),
                self.embedder.model_id, companions=self.companions, dtype=self.config.gallery.embedding_dtype,
                quality=[a[1] for a in accepted], source=[a[2] for a in accepted], keep_crops=self.keep_crops)
            self.gallery.log_event("enrolled", name=name, person_id=person_id, model_id=self.embedder.model_id,
                                   detail={"samples": len(accepted), "via": "files", "at": time.time()})

    def enroll_many(self, people: Iterable[tuple], on_person: Callable[[str], None] | None = None
                    ) -> tuple[list[PersonReport], list[str]]:
        """Every person in turn: (reports, names not processed because a write failed)."""
        people = list(people)
        reports: list[PersonReport] = []
        for i, (name, paths, *folder) in enumerate(people):
            if on_person is not None:
                on_person(name)
            report = self.enroll(name, paths, *folder)
            reports.append(report)
            if report.write_error is not None:
                return reports, [shown_name(p[0]) for p in people[i + 1:]]
        return reports, []
