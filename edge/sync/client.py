"""The MQTT connection of ``edge sync`` (paho-mqtt 1.x or 2.x).

QoS 1 both ways; a persistent session (``clean_session=False``, a client id per site and unit), so the
broker keeps what arrives while this unit is away; paho reconnects with a backoff of 1 s doubling to 60 s.
Bounded: at most ``max_inflight`` unacknowledged messages out and ``queue_size`` queued in paho; incoming
messages wait in a ``queue_size`` queue for the applying thread, and when it stays full the network
thread stops reading (the broker holds them) and, after 5 s, drops the message and asks for a resync
(a new SUBSCRIBE: the broker sends every retained state again).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from ..config import parse_broker
from ..errors import SyncError

log = logging.getLogger(__name__)


def _failed(reason_code) -> bool:
    failure = getattr(reason_code, "is_failure", None)
    return bool(failure) if failure is not None else reason_code != 0


class SyncClient:
    def __init__(self, config, client_factory=None) -> None:
        from ..service.sinks import _paho_client

        fleet = config.fleet
        self.scheme, self.host, self.port = parse_broker(fleet.broker)
        self.keepalive = fleet.keepalive
        base = f"{fleet.topic_prefix}/{fleet.site}"
        self.people_prefix = f"{base}/people/"
        self.people_filter = f"{base}/people/+"
        self.status_filter = f"{base}/units/+/status"
        self.status_topic = f"{base}/units/{fleet.unit}/status"
        self.unit = fleet.unit
        try:
            self.client = (client_factory or _paho_client)(f"edge-sync-{fleet.site}-{fleet.unit}", False)
        except ImportError as exc:
            raise SyncError("gallery sync needs paho-mqtt (pip install 'edge-door[sync]', or apt install "
                            "python3-paho-mqtt)") from exc
        if fleet.username:
            password = None
            if fleet.password_file:
                try:
                    password = config.resolve_path(fleet.password_file).read_text().strip()
                except OSError as exc:
                    raise SyncError(f"fleet.password_file: cannot read: {exc}") from exc
            self.client.username_pw_set(fleet.username, password)
        if self.scheme == "mqtts":
            self.client.tls_set(ca_certs=str(config.resolve_path(fleet.ca_file)) if fleet.ca_file else None,
                                certfile=str(config.resolve_path(fleet.cert_file)) if fleet.cert_file else None,
                                keyfile=str(config.resolve_path(fleet.key_file)) if fleet.key_file else None)
        self.client.max_inflight_messages_set(fleet.max_inflight)
        self.client.max_queued_messages_set(fleet.queue_size)
        self.client.reconnect_delay_set(1, 60)
        self.client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.incoming: queue.Queue = queue.Queue(maxsize=fleet.queue_size)
        self.connected = threading.Event()
        self.generation = 0  # connections so far; the service reconciles after each
        self.subscribed_at = 0.0
        self.last_message_at = 0.0
        self.dropped = 0
        self.received = 0
        self.bytes_received = 0
        self.peers: dict[str, dict] = {}
        self.last_error = ""
        self.stopping = False

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if _failed(reason_code):
            self.last_error = f"broker refused the connection: {reason_code}"
            log.warning("sync: %s", self.last_error)
            return
        client.subscribe([(self.people_filter, 1), (self.status_filter, 1)])
        client.publish(self.status_topic, json.dumps({"state": "online", "at": time.time()}), qos=1, retain=True)
        self.subscribed_at = time.monotonic()
        self.generation += 1
        self.last_error = ""
        self.connected.set()
        log.info("sync: connected to %s:%d (connection %d)", self.host, self.port, self.generation)

    def _on_disconnect(self, client, userdata, *args) -> None:
        if self.connected.is_set() and not self.stopping:
            log.warning("sync: lost the broker %s:%d; deciding goes on locally, changes wait", self.host, self.port)
        self.connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        self.last_message_at = time.monotonic()
        if msg.topic.endswith("/status") and not msg.topic.startswith(self.people_prefix):
            peer = msg.topic.split("/")[-2]
            try:
                state = json.loads(msg.payload or b"{}")
            except ValueError:
                state = {}
            self.peers[peer] = {"state": state.get("state", "?"), "seen_at": time.time()}
            return
        self.received += 1
        self.bytes_received += len(msg.payload) + len(msg.topic)
        try:
            self.incoming.put((msg.topic, bytes(msg.payload)), timeout=5)
        except queue.Full:
            self.dropped += 1
            client.subscribe(self.people_filter, 1)  # the broker sends the retained states again

    # -- the service's side ------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()

    def topic(self, person_uuid: str) -> str:
        return self.people_prefix + person_uuid

    def publish(self, person_uuid: str, data: bytes):
        return self.client.publish(self.topic(person_uuid), data, qos=1, retain=True)

    def wait(self, infos, timeout: float) -> bool:
        """True once the broker acknowledged every message in ``infos`` (QoS 1 PUBACK)."""
        deadline = time.monotonic() + timeout
        for info in infos:
            while not info.is_published():
                if time.monotonic() > deadline or not self.connected.is_set():
                    return False
                time.sleep(0.005)
        return True

    def stop(self) -> None:
        self.stopping = True
        try:
            if self.connected.is_set():
                info = self.client.publish(self.status_topic, json.dumps({"state": "offline", "at": time.time()}),
                                           qos=1, retain=True)
                self.wait([info], 2.0)
            self.client.disconnect()
            self.client.loop_stop()
        except Exception as exc:  # stopping must not fail
            log.debug("sync: stop: %s", exc)
