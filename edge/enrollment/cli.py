"""``edge enroll``: enroll people live (through the running recognizer) or from files, and manage them."""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click

from ..cli import boundary, config_option


def _config(config_path):
    from ..cli import _load, _setup_logging

    config = _load(config_path)
    _setup_logging("warning" if config.log_level == "info" else config.log_level)
    return config


class Progress:
    """What the operator reads out to the person at the door: a bar plus the latest reason.

    On a terminal a tqdm bar whose postfix is the current rejection; otherwise
    (piped, logged) one line per event.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar = None
        self.crops: list[bytes] = []

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            click.echo(text, file=self.stream)

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "started":
            self._line(f"enrolling {event['name']} with the {event['where']} ({event['model']}): "
                       f"{event['samples']} good samples needed; look at the camera")
            if self.tty:
                from tqdm import tqdm

                # Some SSH/serial terminals report 0 columns, which would hide the bar: assume 80.
                # (tqdm hides a bar on a terminal of 0 lines, too.)
                try:
                    size = os.get_terminal_size(self.stream.fileno())
                except (OSError, ValueError):
                    size = os.terminal_size((0, 0))
                sized = size.columns > 0 and size.lines > 0
                self.bar = tqdm(total=event["samples"], unit="sample", file=self.stream, dynamic_ncols=sized,
                                ncols=None if sized else 80, nrows=None if sized else 24,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}")
        elif kind == "accepted":
            if event.get("crop"):
                self.crops.append(base64.b64decode(event["crop"]))
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str("good, keep going" if event["count"] < event["total"] else "done")
            else:
                self._line(f"accepted {event['count']}/{event['total']}")
        elif kind == "rejected":
            message = event["reasons"][0]["message"]
            if self.bar is not None:
                self.bar.set_postfix_str(message)
            else:
                self._line("rejected: " + "; ".join(r["message"] for r in event["reasons"]))
        elif kind in ("warning", "info"):
            self._line(f"{kind}: {event['message']}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_contact_sheet(crops: list[bytes], path: Path, columns: int = 5) -> None:
    import cv2
    import numpy as np

    images = [cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR) for c in crops]
    if not images:
        return
    size = images[0].shape[0]
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * (size + 4) + 4, min(columns, len(images)) * (size + 4) + 4, 3), 32, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = 4 + r * (size + 4), 4 + c * (size + 4)
        sheet[y:y + size, x:x + size] = cv2.resize(image, (size, size))
    ok, data = cv2.imencode(".png", sheet)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.tobytes())
    os.replace(tmp, path)


@click.group("enroll")
def command() -> None:
    """Enroll people live at the door or from photos; list, rename, remove, forget, export, import."""


@command.command("add")
@config_option
@click.argument("name")
@click.option("--samples", "-n", type=click.IntRange(1, 50), default=None, help="Good samples to collect [enrollment.samples].")
@click.option("--contact-sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the accepted face crops as one PNG for review.")
@click.option("--timeout", type=click.FloatRange(5, 3600), default=None, help="Give up after this many seconds [enrollment.timeout].")
@click.option("--keep-crops", is_flag=True, help="Also store the aligned crops (needed to re-embed after a model change).")
@click.option("--allow-lookalike", is_flag=True, help="Enroll a new person even if they match someone enrolled (twins).")
@click.option("--local", "force_local", is_flag=True, help="Do not use the running recognizer; open the camera here.")
@boundary
def add(config_path, name, samples, contact_sheet, timeout, keep_crops, allow_lookalike, force_local):
    """Enroll NAME live: the person stands at the door camera until enough good samples are taken.

    Uses the running recognizer through its control socket, so the door keeps
    working; when no recognizer runs, opens the camera itself.  Nothing is
    saved unless all samples are collected.
    """
    from .control import ControlClient, socket_path
    from .errors import EnrollmentError, ServiceNotRunning
    from .live import run_local

    config = _config(config_path)
    samples = samples or config.enrollment.samples
    timeout = timeout or config.enrollment.timeout
    progress = Progress()
    request = {"op": "enroll", "name": name, "samples": samples, "timeout": timeout, "keep_crops": keep_crops,
               "crops": contact_sheet is not None, "allow_lookalike": allow_lookalike}
    path = socket_path(config)
    client = ControlClient(path)
    try:
        try:
            client.connect()
        except ServiceNotRunning:
            client = None
        if client is not None and force_local:
            raise EnrollmentError(f"the recognizer is running ({path}) and owns the camera; drop --local")
        if client is not None:
            result = None
            for event in client.request(request, idle_timeout=30.0):
                if event["event"] == "done":
                    result = event
                elif event["event"] == "error":
                    raise EnrollmentError(event["message"])
                else:
                    progress(event)
            if result is None:
                raise EnrollmentError("the recognizer closed the connection before finishing; nothing was saved")
        else:
            click.echo(f"no recognizer is running ({path} absent): using the camera here", err=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            result = run_local(config, name, samples, progress, timeout=timeout, keep_crops=keep_crops,
                               allow_lookalike=allow_lookalike, want_crops=contact_sheet is not None, stop=stop)
    except KeyboardInterrupt:
        progress.close()
        click.echo("cancelled: nothing was saved", err=True)
        sys.exit(130)
    finally:
        progress.close()
        if client is not None:
            client.close()
    if contact_sheet is not None:
        write_contact_sheet(progress.crops, contact_sheet)
        click.echo(f"contact sheet: {contact_sheet}", err=True)
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.get("rejections", {}).items(), key=lambda kv: -kv[1]))
    click.echo(f"enrolled {result['name']}: {result['added']} samples added ({result['total_samples']} in all) "
               f"with {result['model']}" + (f"; rejected frames: {rejected}" if rejected else ""))


def _clean(text: str) -> str:
    """One report line per file: control, bidi and other format characters (in file names too) escaped."""
    import unicodedata

    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def _bulk(config, people, keep_crops, allow_lookalike, dry_run, as_json):
    """Enroll, then print the whole report (also when a write failed part way); returns the reports."""
    from tqdm import tqdm

    from ..app import build_companions, build_detector, build_embedder, effective_threshold
    from ..gallery import Gallery
    from .bulk import BulkEnroller, shown_name

    detector, embedder = build_detector(config), build_embedder(config)
    threshold = effective_threshold(config, embedder)
    total = sum(len(person[1]) for person in people)
    with Gallery(config.gallery_path()) as gallery, \
            tqdm(total=total, unit="file", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        def on_file(result):
            bar.update(1)
            bar.set_postfix_str(_clean(f"{result.person}: {result.status}"))

        enroller = BulkEnroller(gallery, detector, embedder, threshold, config, keep_crops=keep_crops,
                                allow_lookalike=allow_lookalike, dry_run=dry_run, on_file=on_file,
                                companions=build_companions(config, embedder.model_id))
        reports, not_processed = enroller.enroll_many(
            people, on_person=lambda name: bar.set_description(shown_name(name)))
    failure = next((r.write_error for r in reports if r.write_error is not None), None)
    skipped_because = f"not processed: the gallery write before failed ({failure})" if failure else ""
    if as_json:
        rows = [{"name": r.name, "added": r.added, "warnings": r.warnings, "error": r.error,
                 "files": [f.as_dict() for f in r.files]} for r in reports]
        rows += [{"name": name, "added": 0, "warnings": [], "error": skipped_because, "files": []}
                 for name in not_processed]
        click.echo(json.dumps(rows))
    else:
        for r in reports:
            for f in r.files:
                click.echo(f"{f.status:8s} {_clean(r.name)}\t{_clean(f.path)}"
                           + (f"\t{_clean(f.reason)}" if f.reason else ""))
            for w in r.warnings:
                click.echo(f"warning  {_clean(r.name)}\t{_clean(w)}")
        for name in not_processed:
            click.echo(f"error    {_clean(name)}\t-\t{_clean(skipped_because)}")
        added = sum(r.added for r in reports)
        counts = {}
        for r in reports:
            for f in r.files:
                counts[f.status] = counts.get(f.status, 0) + 1
        verb = "would add" if dry_run else "added"
        click.echo(f"{verb} {added} samples for {sum(1 for r in reports if r.added)} people; "
                   + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if failure is not None:
        raise failure  # the boundary prints it and exits with its status (73)
    return reports


bulk_options = [
    click.option("--keep-crops", is_flag=True, help="Also store the aligned crops."),
    click.option("--allow-lookalike", is_flag=True, help="Enroll a new person even if they match someone enrolled."),
    click.option("--dry-run", is_flag=True, help="Check every file, write nothing."),
    click.option("--json", "as_json", is_flag=True, help="The per-file report as JSON."),
]


def _with(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


@command.command("files")
@config_option
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_with(bulk_options)
@boundary
def files(config_path, name, images, keep_crops, allow_lookalike, dry_run, as_json):
    """Enroll NAME from image files (one face each); files already enrolled are skipped."""
    from ..gallery import validate_name

    name = validate_name(name)  # bad input (65) before the models load
    config = _config(config_path)
    reports = _bulk(config, [(name, list(images))], keep_crops, allow_lookalike, dry_run, as_json)
    if not all(r.ok for r in reports):
        sys.exit(65)


@command.command("folder")
@config_option
@click.argument("root", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_with(bulk_options)
@boundary
def folder(config_path, root, keep_crops, allow_lookalike, dry_run, as_json):
    """Enroll everyone in ROOT: one sub-folder per person (Ada_Lovelace/ -> "Ada Lovelace").

    A person who cannot be enrolled (invalid folder name, no usable image) is
    reported and skipped; the others are enrolled, and the exit status is then 65.
    """
    from .bulk import folder_people

    config = _config(config_path)
    people = folder_people(root)
    if not people:
        raise click.ClickException(f"{root} has no sub-folders; the layout is ROOT/Person_Name/*.jpg")
    reports = _bulk(config, people, keep_crops, allow_lookalike, dry_run, as_json)
    failed = [r.name for r in reports if not r.ok]
    if failed:
        click.echo(_clean(f"edge: error: {len(failed)} of {len(reports)} people not enrolled: {', '.join(failed)}"),
                   err=True)
        sys.exit(65)


@command.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
@boundary
def list_(config_path, as_json):
    """Enrolled people: samples, kept crops, last seen, model."""
    from ..gallery import Gallery

    config = _config(config_path)
    with Gallery(config.gallery_path()) as gallery:
        rows = gallery.people()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], default=list))
        return
    if not rows:
        click.echo("no one is enrolled")
        return
    for r in rows:
        seen = datetime.datetime.fromtimestamp(r.last_seen).isoformat(timespec="seconds") if r.last_seen else "never"
        click.echo(f"{r.name}\tsamples={r.samples}\tcrops={r.crops}\tlast_seen={seen}\tmodel={','.join(r.models) or '-'}")


@command.command("rename")
@config_option
@click.argument("old")
@click.argument("new")
@boundary
def rename(config_path, old, new):
    """Rename a person (their events follow)."""
    from ..errors import GalleryError
    from ..gallery import Gallery, validate_name

    new = validate_name(new)
    config = _config(config_path)
    with Gallery(config.gallery_path(), create=False) as gallery:
        stored = gallery.stored_name(old) or old
        # "José" typed composed must not become a second, identical-looking person beside a decomposed one.
        taken = gallery.stored_name(new)
        if taken is not None and taken != stored:
            raise GalleryError(f"cannot rename {old!r} to {new!r}: that name is taken")
        gallery.rename(stored, new)
    click.echo(f"renamed {old} to {new}")


def _remove(config_path, name, forget):
    from ..gallery import Gallery

    config = _config(config_path)
    with Gallery(config.gallery_path(), create=False) as gallery:
        counts = gallery.remove(gallery.stored_name(name) or name, forget=forget)
        if forget:
            gallery.vacuum()
    return counts


@command.command("remove")
@config_option
@click.argument("name")
@boundary
def remove(config_path, name):
    """Remove NAME: embeddings and kept crops; their past events stay (without the link)."""
    counts = _remove(config_path, name, False)
    click.echo(f"removed {name}: deleted {counts['samples']} embeddings and {counts['crops']} crops; events kept")


@command.command("forget")
@config_option
@click.argument("name")
@boundary
def forget(config_path, name):
    """Forget NAME entirely: embeddings, kept crops and events, then VACUUM so nothing stays on disk."""
    counts = _remove(config_path, name, True)
    click.echo(f"forgot {name}: deleted {counts['samples']} embeddings, {counts['crops']} crops and "
               f"{counts['events']} events; the gallery file was vacuumed")


@command.command("reembed")
@config_option
@boundary
def reembed(config_path):
    """Re-embed everyone's kept crops with the configured embedder (after switching models).

    Samples of the old model stay, so switching back keeps working. People
    enrolled without --keep-crops are listed: they must be enrolled again.
    """
    from ..app import build_companions, build_embedder
    from .store import reembed_from_crops
    from ..gallery import Gallery

    config = _config(config_path)
    with Gallery(config.gallery_path(), create=False) as gallery:
        # The two-stage confirming model needs its own samples too.
        main = build_embedder(config)
        for embedder in [main, *build_companions(config, main.model_id)]:
            report = reembed_from_crops(gallery, embedder, config.gallery.embedding_dtype)
            for name, result in report.items():
                if result == "re-enroll":
                    click.echo(f"{name}: no kept crops, must be enrolled again with {embedder.model_id}")
                else:
                    click.echo(f"{name}: {result} sample(s) added for {embedder.model_id}")


@command.command("export")
@config_option
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--person", "names", multiple=True, help="Only these people (repeatable).")
@click.option("--crops", is_flag=True, help="Include kept face crops.")
@boundary
def export(config_path, target, names, crops):
    """Export the gallery (people, samples, optionally crops) to one checksummed file."""
    from ..gallery import Gallery
    from .transfer import export_gallery

    config = _config(config_path)
    with Gallery(config.gallery_path(), create=False) as gallery:
        names = [gallery.stored_name(n) or n for n in names]
        header = export_gallery(gallery, target, names=names or None, crops=crops)
    click.echo(f"exported {header['people']} people, {header['samples']} samples "
               f"({', '.join(header['models']) or 'no model'}) to {target}; sha256 {header['sha256'][:16]}")


@command.command("import")
@config_option
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--merge", is_flag=True, help="People already enrolled here get the imported samples added.")
@click.option("--skip-existing", is_flag=True, help="People already enrolled here are left alone.")
@boundary
def import_(config_path, source, merge, skip_existing):
    """Import an export file (samples of the models this unit runs; all or nothing)."""
    from ..bundle import load_bundle
    from ..gallery import Gallery
    from .transfer import import_gallery, model_map

    config = _config(config_path)
    names = [config.embedder.model] + ([config.embedder.confirm_model] if config.embedder.confirm_model else [])
    models = model_map([load_bundle(config.model_path(n), expect_kind="embedder") for n in names])
    with Gallery(config.gallery_path()) as gallery:
        counts = import_gallery(gallery, source, models, merge=merge, skip_existing=skip_existing)
    click.echo(f"imported {counts['people']} people ({counts['new_people']} new), {counts['samples']} samples, "
               f"{counts['crops']} crops; skipped {counts['skipped_people']} people, "
               f"{counts['skipped_samples']} samples already here")
    if counts["foreign_samples"]:
        click.echo(f"left out {counts['foreign_samples']} samples of models this unit does not run", err=True)
