"""The ``edge sync`` loop: publish this unit's changes, apply the site's, write a status file.

One thread owns the gallery connection (this loop); paho's network thread only queues messages.
Publishing is idempotent (a message is a person's whole current state, retained), so the cursor of
published changes moves only after the broker acknowledged them, and anything in doubt is sent again.
After each (re)connect, once the retained states have arrived, every record this unit wrote that the
broker does not hold in the same version is published again: a broker that lost its store, or a unit
whose changes were never acknowledged, converges without an operator.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

from ..errors import ConfigError, PayloadRefused, SyncError

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0  # quiet time after a subscribe before the broker's retained states count as complete
BATCH = 200
APPLIED = ("created", "updated", "removed", "forgotten")


def model_ids(config) -> tuple[str, dict[str, str]]:
    """This unit's main model id and its model map (main first, then the two-stage confirmer)."""
    from ..bundle import load_bundle
    from ..enrollment.transfer import model_map

    bundles = [load_bundle(config.model_path(config.embedder.model), expect_kind="embedder")]
    if config.embedder.confirm_model:
        bundles.append(load_bundle(config.model_path(config.embedder.confirm_model), expect_kind="embedder"))
    return bundles[0].model_id, model_map(bundles)


def load_keys(config):
    """(this unit's private key, the site key list), checked against each other."""
    from . import keys

    fleet = config.fleet
    if not fleet.broker:
        raise ConfigError("fleet.broker is empty: gallery sync is off (set [fleet] broker, site, unit, "
                          "signing_key and site_keys)")
    private = keys.load_private(config.resolve_path(fleet.signing_key))
    site_keys = keys.SiteKeys.load(config.resolve_path(fleet.site_keys))
    mine = keys.public_line(fleet.unit, private.public_key())
    listed = site_keys.get(fleet.unit)
    if listed is None or keys.public_line(fleet.unit, listed) != mine:
        raise SyncError(f"fleet.site_keys has no key for unit {fleet.unit} matching fleet.signing_key; add this "
                        f"line to the site key list on every unit:\n{mine}")
    return private, site_keys


def preflight(config) -> list[str]:
    """``edge check-config --for sync``: keys, models, gallery and broker settings, without connecting."""
    from ..config import parse_broker

    private, site_keys = load_keys(config)
    fleet = config.fleet
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError as exc:
        raise SyncError("gallery sync needs paho-mqtt (pip install 'edge-door[sync]', or apt install "
                        "python3-paho-mqtt)") from exc
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = getattr(fleet, key)
        if value and not os.access(config.resolve_path(value), os.R_OK):
            raise ConfigError(f"fleet.{key} {value} is not readable")
    scheme, host, port = parse_broker(fleet.broker)
    model_id, _ = model_ids(config)
    from ..preflight import _writable_dir

    _writable_dir(config.gallery_path().parent, "gallery")
    return [f"sync: unit {fleet.unit} of site {fleet.site}, broker {scheme}://{host}:{port}"
            f"{' as ' + fleet.username if fleet.username else ' anonymously'}",
            f"sync: signing key matches the site key list ({len(site_keys.units())} units: "
            f"{', '.join(site_keys.units())})",
            f"sync: site model {model_id}"]


class SyncService:
    def __init__(self, config, client_factory=None) -> None:
        from ..gallery import Gallery
        from .client import SyncClient

        self.config = config
        self.fleet = config.fleet
        self.key, self.site_keys = load_keys(config)
        self.model_id, self.models = model_ids(config)
        self.gallery = Gallery(config.gallery_path())
        self.client = SyncClient(config, client_factory)
        self.status_path = config.sync_status_path()
        self.seen: dict[str, tuple[int, str]] = {}
        self.deferred: dict[str, object] = {}
        self.generation = 0
        self.reconciled = 0
        self.counts = {"applied": 0, "stale": 0, "published": 0, "republished": 0, "refused": 0}
        self.refused: dict[str, int] = {}
        self.last_applied: dict | None = None
        self.last_published_at: float | None = None
        self.started_at = time.time()
        self._status_due = 0.0

    # -- incoming ------------------------------------------------------------------------------
    def _handle(self, topic: str, data: bytes) -> None:
        from . import payload, state

        person_uuid = topic.rsplit("/", 1)[-1]
        if not data:
            return  # a cleared retained message
        try:
            verified = payload.verify(data, topic_uuid=person_uuid, site=self.fleet.site, keys=self.site_keys,
                                      models=self.models)
        except PayloadRefused as exc:
            self.counts["refused"] += 1
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            log.warning("sync: refused %s (%s): %s", topic, exc.reason, exc)
            return
        self.seen[person_uuid] = (verified.body["version"], verified.unit)
        self._apply(verified)

    def _apply(self, verified) -> None:
        from . import state

        outcome = state.apply(self.gallery, verified, self_unit=self.fleet.unit, models=self.models)
        uuid = verified.body["uuid"]
        if outcome.action == "name_taken":
            if uuid not in self.deferred:
                log.warning("sync: %s from unit %s waits: %s", uuid, outcome.unit, outcome.detail)
            self.deferred[uuid] = verified
            return
        self.deferred.pop(uuid, None)
        if outcome.action in APPLIED:
            self.counts["applied"] += 1
            self.last_applied = {"at": time.time(), "uuid": uuid, "unit": outcome.unit, "change": outcome.action}
            log.info("sync: %s %s from unit %s (%s)", outcome.action, uuid, outcome.unit, outcome.detail)
        elif outcome.action == "refused_forgotten":
            log.warning("sync: %s from unit %s not applied: that person was forgotten", uuid, outcome.unit)
        else:
            self.counts["stale"] += 1

    def drain(self, wait: float) -> int:
        handled = 0
        try:
            topic, data = self.client.incoming.get(timeout=wait)
        except queue.Empty:
            return 0
        while True:
            self._handle(topic, data)
            handled += 1
            if handled >= 2000:
                return handled
            try:
                topic, data = self.client.incoming.get_nowait()
            except queue.Empty:
                return handled

    # -- outgoing ------------------------------------------------------------------------------
    def _send(self, uuids: list[str]) -> bool:
        from . import state

        infos = []
        for person_uuid in uuids:
            data = state.own_message(self.gallery, person_uuid, site=self.fleet.site, unit=self.fleet.unit,
                                     model_id=self.model_id, key=self.key)
            if data is not None:
                infos.append(self.client.publish(person_uuid, data))
        if self.client.wait(infos, timeout=30.0):
            self.last_published_at = time.time() if infos else self.last_published_at
            return True
        return False

    def publish_local(self) -> None:
        cursor = self.gallery.sync_cursor()
        changes = self.gallery.local_changes(cursor, limit=BATCH)
        if not changes:
            return
        uuids = list(dict.fromkeys(c["person_uuid"] for c in changes))
        if self._send(uuids):
            self.gallery.set_sync_cursor(changes[-1]["seq"])
            self.counts["published"] += len(uuids)

    def reconcile(self) -> None:
        """Publish again what this unit wrote and the broker does not hold in that version."""
        missing = [u for u, (kind, version, origin, _) in self.gallery.sync_versions().items()
                   if origin is None and self.seen.get(u) != (version, self.fleet.unit)]
        for start in range(0, len(missing), BATCH):
            if not self._send(missing[start:start + BATCH]):
                return
        if missing:
            log.info("sync: published %d records the broker did not hold", len(missing))
        self.counts["republished"] += len(missing)
        self.reconciled = self.generation

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> None:
        client = self.client
        if client.generation != self.generation:
            self.generation = client.generation
            self.seen.clear()
        self.drain(self.fleet.poll_interval)
        if client.connected.is_set():
            self.publish_local()
            quiet = time.monotonic() - max(client.subscribed_at, client.last_message_at)
            if self.reconciled != self.generation and quiet > SETTLE_SECONDS and client.incoming.empty():
                self.reconcile()
        for verified in list(self.deferred.values()):
            self._apply(verified)
        if time.monotonic() >= self._status_due:
            self.write_status()
            self._status_due = time.monotonic() + 1.0

    def status(self) -> dict:
        cursor = self.gallery.sync_cursor()
        import resource

        return {
            "site": self.fleet.site, "unit": self.fleet.unit, "broker": self.fleet.broker,
            "connected": self.client.connected.is_set(), "last_error": self.client.last_error,
            "pid": os.getpid(), "started_at": self.started_at, "written_at": time.time(),
            "model_id": self.model_id, "people": len(self.gallery.people()),
            "peers": {u: p for u, p in self.client.peers.items() if u != self.fleet.unit},
            "last_applied": self.last_applied, "last_published_at": self.last_published_at,
            "pending": self.gallery.pending_local_changes(cursor), "published_seq": cursor,
            "deferred": sorted(self.deferred), "counts": dict(self.counts), "refused": dict(self.refused),
            "received": self.client.received, "bytes_received": self.client.bytes_received,
            "dropped": self.client.dropped,
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def write_status(self) -> None:
        path = Path(self.status_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("sync: status file: %s", exc)

    def run(self, stop: threading.Event) -> None:
        self.client.start()
        log.info("sync: unit %s of site %s, broker %s, model %s", self.fleet.unit, self.fleet.site,
                 self.fleet.broker, self.model_id)
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.client.stop()
            self.client.connected.clear()
            self.write_status()
            self.gallery.close()
