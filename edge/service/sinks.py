"""Optional event sinks: an HTTP webhook and MQTT (Home Assistant conventions), both off by default.

Each sink owns a bounded queue and one daemon thread.  ``submit`` never blocks
and never raises: when the queue is full the oldest event is dropped; a failed
delivery is logged (at most once a minute per sink) and forgotten.  The door
decision has already been made and acted on before an event reaches a sink.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .events import KINDS

log = logging.getLogger(__name__)

_STOP = object()


class QueuedSink:
    name = "sink"

    def __init__(self, queue_size: int = 100) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name=f"edge-sink-{self.name}", daemon=True)
        self._started = False

    def start(self) -> "QueuedSink":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, event: dict) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        self.setup()
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                break
            try:
                self.deliver(item)
                self.delivered += 1
            except Exception as exc:  # every failure stays inside this thread
                self.failed += 1
                now = time.monotonic()
                if now - self._last_warning > 60:
                    self._last_warning = now
                    log.warning("%s sink: delivery failed (%s); %d failed so far", self.name, exc, self.failed)
            finally:
                self._queue.task_done()
        self.teardown()

    def setup(self) -> None:
        pass

    def deliver(self, event: dict) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 2.0) -> None:
        if not self._started:
            return
        self.submit(_STOP)
        self._thread.join(timeout)


class WebhookSink(QueuedSink):
    """POST each event as a JSON object to ``url`` (urllib; no extra dependency)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0, queue_size: int = 100) -> None:
        super().__init__(queue_size)
        self.url = url
        self.timeout = timeout

    def deliver(self, event: dict) -> None:
        body = json.dumps(event).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "edge-door"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")


EVENT_TYPES = [kind.name for kind in KINDS.values() if kind.home_assistant]


def discovery_messages(topic_prefix: str, discovery_prefix: str, node_id: str) -> list[tuple[str, dict]]:
    """Home Assistant MQTT discovery: an ``event`` entity for access events, a ``binary_sensor`` for the door."""
    base = f"{topic_prefix}/{node_id}"
    device = {"identifiers": [f"edge_{node_id}"], "name": f"Door {node_id}", "manufacturer": "edge",
              "model": "edge-door face recognition"}
    availability = {"availability_topic": f"{base}/availability", "payload_available": "online",
                    "payload_not_available": "offline"}
    access = {"name": "Access", "unique_id": f"edge_{node_id}_access", "state_topic": f"{base}/event",
              "event_types": EVENT_TYPES, "device": device, **availability}
    door = {"name": "Door", "unique_id": f"edge_{node_id}_door", "device_class": "door",
            "state_topic": f"{base}/door", "payload_on": "open", "payload_off": "closed", "device": device,
            **availability}
    if not discovery_prefix:
        return []
    return [
        (f"{discovery_prefix}/event/{node_id}/access/config", access),
        (f"{discovery_prefix}/binary_sensor/{node_id}/door/config", door),
    ]


def _paho_client(client_id: str, clean_session: bool = True):
    """A paho client with version-2 callbacks (paho-mqtt 2.x) or 1.x's; ``clean_session=False``: a persistent session."""
    import paho.mqtt.client as mqtt  # optional extra: pip install 'edge-door[mqtt]'

    try:  # paho-mqtt 2.x
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    except AttributeError:  # paho-mqtt 1.x
        return mqtt.Client(client_id=client_id, clean_session=clean_session)


class MqttSink(QueuedSink):
    """Publish events to ``<prefix>/<node>/event`` (and door state to ``.../door``) with paho-mqtt.

    Availability is ``online`` (retained) after connecting and ``offline`` by
    last will; discovery configs are retained so Home Assistant finds the unit.
    """

    name = "mqtt"

    def __init__(self, host: str, port: int = 1883, *, tls: bool = False, username: str = "", password: str = "",
                 topic_prefix: str = "edge", discovery_prefix: str = "homeassistant", node_id: str = "door",
                 queue_size: int = 100, client_factory=None) -> None:
        super().__init__(queue_size)
        self.host, self.port = host, port
        self.base = f"{topic_prefix}/{node_id}"
        self.discovery = discovery_messages(topic_prefix, discovery_prefix, node_id)
        self.client = (client_factory or _paho_client)(f"edge-{node_id}")
        if username:
            self.client.username_pw_set(username, password or None)
        if tls:
            self.client.tls_set()
        self.client.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.max_queued_messages_set(queue_size)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        for topic, payload in self.discovery:
            client.publish(topic, json.dumps(payload), qos=1, retain=True)
        client.publish(f"{self.base}/availability", "online", qos=1, retain=True)

    def setup(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=60)
        self.client.loop_start()

    def deliver(self, event: dict) -> None:
        self.client.publish(f"{self.base}/event", json.dumps(event), qos=1)
        kind = KINDS.get(event.get("event_type"))
        if kind is not None and kind.door_state is not None:
            self.client.publish(f"{self.base}/door", kind.door_state, qos=1, retain=True)

    def teardown(self) -> None:
        try:
            self.client.publish(f"{self.base}/availability", "offline", qos=1, retain=True)
            self.client.disconnect()
            self.client.loop_stop()
        except Exception as exc:
            log.debug("mqtt teardown: %s", exc)


def build_sinks(events_config, client_factory=None) -> list[QueuedSink]:
    """The sinks ``[events]`` turns on, started.  A sink that cannot be built is logged and left out."""
    e = events_config
    sinks: list[QueuedSink] = []
    if e.webhook_url:
        sinks.append(WebhookSink(e.webhook_url, e.webhook_timeout, e.queue_size).start())
    if e.mqtt_host:
        try:
            password = Path(e.mqtt_password_file).read_text().strip() if e.mqtt_password_file else ""
            sinks.append(MqttSink(
                e.mqtt_host, e.mqtt_port, tls=e.mqtt_tls, username=e.mqtt_username, password=password,
                topic_prefix=e.mqtt_topic_prefix, discovery_prefix=e.mqtt_discovery_prefix, node_id=e.mqtt_node_id,
                queue_size=e.queue_size, client_factory=client_factory,
            ).start())
        except ImportError:
            log.error("events.mqtt_host is set but paho-mqtt is not installed (pip install 'edge-door[mqtt]' "
                      "or apt install python3-paho-mqtt): MQTT events are off")
        except Exception as exc:
            log.error("MQTT sink could not be set up: %s: MQTT events are off", exc)
    return sinks
