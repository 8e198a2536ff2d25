"""``edge sync``: run the gallery sync; ``edge sync status``; ``edge sync keygen``."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import click

from ..cli import boundary, config_option


def _config(config_path):
    from ..cli import _load, _setup_logging

    config = _load(config_path)
    _setup_logging(config.log_level)
    return config


@click.group("sync", invoke_without_command=True)
@config_option
@click.pass_context
@boundary
def command(ctx, config_path):
    """Share this unit's people with the site's other doors through the [fleet] MQTT broker.

    Without a subcommand it runs (the edge-sync.service process) until SIGTERM. Every door keeps
    deciding on its local gallery while the broker or the network is down.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = config_path
        return
    from .service import SyncService

    config = _config(config_path)
    service = SyncService(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.run(stop)


def _ago(ts) -> str:
    if not ts:
        return "never"
    return f"{time.time() - ts:.0f} s ago"


@command.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The status file as JSON.")
@click.pass_context
@boundary
def status(ctx, config_path, as_json):
    """Peers seen, the last change applied, changes not yet published (from the running edge sync)."""
    from ..errors import SyncError
    from ..gallery import Gallery

    config = _config(config_path or ctx.obj)
    path = config.sync_status_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SyncError(f"no sync status at {path} (is edge sync running?): {exc}") from exc
    if config.gallery_path().exists():  # pending is read fresh: the gallery may have changed since
        with Gallery(config.gallery_path(), create=False) as gallery:
            data["pending"] = gallery.pending_local_changes(gallery.sync_cursor())
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    fresh = time.time() - data.get("written_at", 0) < 10
    click.echo(f"unit {data['unit']} of site {data['site']}, broker {data['broker']}: "
               f"{'connected' if data['connected'] and fresh else 'NOT connected'}"
               f"{'' if fresh else ' (status is stale: edge sync is not running)'}"
               f"{' - ' + data['last_error'] if data.get('last_error') else ''}")
    click.echo(f"people here: {data['people']}; model {data['model_id']}")
    peers = data.get("peers") or {}
    click.echo("peers: " + (", ".join(f"{u} ({p['state']}, {_ago(p['seen_at'])})" for u, p in sorted(peers.items()))
                            or "none seen"))
    last = data.get("last_applied")
    click.echo("last change applied: " + (f"{last['change']} {last['uuid']} from {last['unit']}, {_ago(last['at'])}"
                                          if last else "none"))
    click.echo(f"pending changes (not yet acknowledged by the broker): {data['pending']}")
    counts = data.get("counts", {})
    refused = data.get("refused") or {}
    click.echo(f"applied {counts.get('applied', 0)}, published {counts.get('published', 0)}, refused "
               f"{counts.get('refused', 0)}" + (f" ({', '.join(f'{k}: {v}' for k, v in refused.items())})"
                                                 if refused else "")
               + (f", waiting on a name clash: {len(data['deferred'])}" if data.get("deferred") else ""))


@command.command("keygen")
@click.option("--unit", required=True, help="This unit's name (fleet.unit).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the private key (fleet.signing_key), mode 0600.")
@click.option("--force", is_flag=True, help="Replace an existing key.")
@boundary
def keygen(unit, out, force):
    """Make this unit's Ed25519 signing key; prints the line to add to the site key list on every unit."""
    from .keys import generate

    click.echo(generate(out, unit, force=force))
