"""``edge``: run the recognizer, check the config, manage enrolled people.

A thin layer over the library: each command loads the config, calls library
functions, and turns :class:`edge.errors.EdgeError` into a one-line message
and the error's exit status (so systemd and scripts can tell a bad config from
a tampered model from a dead camera).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from .errors import EdgeError

log = logging.getLogger(__name__)


class EdgeClickError(click.ClickException):
    def __init__(self, error: EdgeError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"edge: error: {self.format_message()}", err=True)


def boundary(func):
    """Domain errors become ClickExceptions here, and only here."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgeError as exc:
            raise EdgeClickError(exc) from exc

    return wrapper


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    envvar="EDGE_CONFIG", help="TOML config file (default: the embedded demo config). Env: EDGE_CONFIG.",
)


def _load(config_path):
    from .config import load_config

    return load_config(config_path)


# Commands that live in their own modules, imported only when they run.
LAZY_COMMANDS = {
    "serve": "edge.service.recognizer_service:command",
    "door": "edge.service.door.cli:command",
    "enroll": "edge.enrollment.cli:command",
    "liveness": "edge.liveness_cli:liveness",
    "liveness-tune": "edge.liveness_cli:tune",
    "sync": "edge.sync.cli:command",
}


def _commands():
    from .registry import Registry

    return Registry("command", "edge.commands", LAZY_COMMANDS)


class _Group(click.Group):
    def list_commands(self, ctx):
        commands = _commands()
        return sorted(set(super().list_commands(ctx)) | {n for n in commands.names() if commands.optional(n)})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        commands = _commands()
        # A command of an extra that is not installed is absent, not an error.
        return commands.optional(name) if name in commands.names() else None


@click.group(cls=_Group)
@click.version_option(package_name="edge-door")
def main() -> None:
    """Face-recognition door access: recognizer, gallery and configuration tools."""


@main.command()
@config_option
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after this many frames.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision instead of text.")
@boundary
def run(config_path, max_frames, as_json):
    """Run the recognizer and print one line per decision.

    With no config it replays the bundled demo sequence against a demo gallery
    and exits at the end of the replay.
    """
    from .app import Recognizer
    from .service.events import decision_events
    from .service.sinks import build_sinks

    config = _load(config_path)
    _setup_logging(config.log_level)
    started = time.monotonic()
    recognizer = Recognizer(config)
    # The same [events] sinks as edge serve: a webhook or MQTT set up in the config is tried here first.
    sinks = build_sinks(config.events)
    if sinks:
        log.info("publishing decisions to %s", ", ".join(type(s).__name__ for s in sinks))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def on_decision(decision):
        for event in decision_events(decision) if sinks else ():
            for sink in sinks:
                sink.submit(event.as_dict())
        if as_json:
            click.echo(json.dumps({
                "outcome": decision.outcome.value, "name": decision.name, "distance": decision.distance,
                "frames": decision.frames, "window": decision.window, "frame": decision.frame_index,
                "model": decision.model, "since_start_s": round(time.monotonic() - started, 3),
                **decision.check_detail(),
            }))
        else:
            click.echo(decision.describe())

    try:
        stats = recognizer.run(on_decision=on_decision, stop=stop, max_frames=max_frames)
    finally:
        recognizer.close()
        for sink in sinks:
            sink.close()
    log.info("%d frames, %d faces, %d decisions (%d granted), %.1f fps", stats.frames, stats.faces,
             stats.decisions, stats.granted, stats.fps)


@main.command("check-config")
@config_option
@click.option("--for", "target", type=click.Choice(["recognizer", "door", "sync", "syntax"]), default="recognizer",
              show_default=True,
              help="What to verify beyond the file: the recognizer's models, gallery and camera source; the door "
                   "actuator's user and GPIO library; the gallery sync's keys, models and broker settings; or only "
                   "the file itself.")
@boundary
def check_config(config_path, target):
    """Validate the config, verify what start-up needs, and print the effective configuration.

    The units run it as ExecStartPre=: a config that would fail at start
    fails here with the same message and exit status.
    """
    from .config import to_toml
    from .preflight import check

    config = _load(config_path)
    report = [] if target == "syntax" else check(config, target)
    click.echo(to_toml(config), nl=False)
    for line in report:
        click.echo(f"check-config: ok: {line}", err=True)


def _detail(raw) -> str:
    """The audit row's detail (a face check's name, score and reason; an actuation's reply) as key=value."""
    if not raw:
        return ""
    try:
        detail = json.loads(raw)
    except ValueError:
        return f" detail={raw!r}"
    parts = []
    for key, value in detail.items():
        if value is None or value is False:
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown!r}" if " " in shown else f"{key}={shown}")
    return (" " + " ".join(parts)) if parts else ""


@main.command()
@config_option
@click.option("--limit", default=20, show_default=True)
@click.option("--kind", default=None, help="Only this kind (granted, unknown, no_face, ...).")
@click.option("--name", default=None, help="Only events of this person.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come.")
@boundary
def events(config_path, limit, kind, name, follow):
    """Show the audit trail of decisions and actuations."""
    from .gallery import Gallery

    config = _load(config_path)
    with Gallery(config.gallery_path(), create=False) as gallery:
        last_id = None
        while True:
            rows = gallery.events(limit=limit, kind=kind, name=name, after_id=last_id)
            for row in rows:
                when = datetime.datetime.fromtimestamp(row["ts"]).isoformat(timespec="seconds")
                dist = "" if row["distance"] is None else f" distance={row['distance']:.3f}"
                who = f" name={row['name']}" if row["name"] else ""
                click.echo(f"{when} {row['kind']}{who}{dist}{_detail(row.get('detail'))}")
                last_id = row["id"]
            if not follow:
                break
            if last_id is None:
                last_id = 0
            time.sleep(0.5)


@main.command()
@config_option
@boundary
def models(config_path):
    """List installed model bundles, verify them, and say which one the gallery was enrolled with."""
    from .bundle import load_bundle, read_manifest
    from .errors import ModelError
    from .gallery import Gallery

    config = _load(config_path)
    root = config.resolved_models_dir()
    gallery_models = {}
    if config.gallery_path().exists():
        with Gallery(config.gallery_path(), create=False) as gallery:
            gallery_models = gallery.model_counts()
    from .checks import check_names, liveness_model_names

    selected = {config.embedder.model, config.detector.model, config.embedder.confirm_model} - {""}
    if "liveness" in check_names(config):
        selected |= set(liveness_model_names(config))
    broken = []
    installed: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
        error = None
        try:
            bundle = load_bundle(folder)
            state = "ok"
            model_id = bundle.model_id
            kind = bundle.kind
            licence = bundle.manifest.get("licence", "?")
            # A gallery enrolled before manifests were sealed records the legacy id until the next start.
            ids = {model_id, bundle.legacy_model_id}
        except ModelError as exc:
            error = exc
            state = f"INVALID: {exc}"
            try:
                manifest = read_manifest(folder)
                model_id, kind = manifest.get("name", folder.name), manifest.get("kind", "?")
                licence = manifest.get("licence", "?")
            except ModelError:
                model_id, kind, licence = folder.name, "?", "?"
            ids = {model_id}
        installed |= ids
        marks = []
        if folder.name in selected:
            marks.append("selected")
            if error is not None:
                broken.append(error)
        samples = sum(gallery_models.get(i, 0) for i in ids)
        if samples:
            marks.append(f"gallery: {samples} samples")
        click.echo(f"{folder.name}\t{kind}\t{model_id}\t{state}\tlicence: {licence}"
                   + (f"\t[{'; '.join(marks)}]" if marks else ""))
    for model_id, count in gallery_models.items():
        if model_id not in installed:
            click.echo(f"(gallery holds {count} samples of {model_id}, which is not installed)")
    if broken:
        # The unit would refuse to start on this bundle: say so in the exit status too.
        raise broken[0]


if __name__ == "__main__":
    main()
