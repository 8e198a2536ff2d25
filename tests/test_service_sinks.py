"""Event sinks: a webhook on a loopback HTTP server, MQTT against a fake paho client; failures stay isolated."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge.config import EventsConfig
from edge.service.sinks import MqttSink, WebhookSink, build_sinks, discovery_messages


@pytest.fixture
def http_server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            if self.path == "/slow":
                time.sleep(2)
            self.send_response(500 if self.path == "/fail" else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_webhook_posts_each_event_as_json(http_server):
    base, received = http_server
    sink = WebhookSink(base + "/hook", timeout=2).start()
    sink.submit({"event_type": "granted", "person": "Ada"})
    assert sink.flush(5)
    sink.close()
    assert received == [("/hook", "application/json", {"event_type": "granted", "person": "Ada"})]
    assert sink.delivered == 1


def test_webhook_failures_and_slowness_never_block_submit(http_server):
    base, received = http_server
    failing = WebhookSink(base + "/fail", timeout=1).start()
    slow = WebhookSink(base + "/slow", timeout=0.5, queue_size=3).start()
    started = time.monotonic()
    for i in range(10):
        failing.submit({"event_type": "unknown", "i": i})
        slow.submit({"event_type": "unknown", "i": i})
    assert time.monotonic() - started < 0.1  # submit never waits for the network
    assert failing.flush(5)
    assert failing.failed == 10 and failing.delivered == 0
    assert slow.dropped >= 6  # a full queue drops the oldest
    failing.close()
    slow.close(timeout=0.1)


def test_webhook_to_a_closed_port_fails_quietly():
    sink = WebhookSink("http://127.0.0.1:9/nothing", timeout=0.5).start()
    sink.submit({"event_type": "unlock"})
    assert sink.flush(5) and sink.failed == 1
    sink.close()


class FakeMqttClient:
    def __init__(self, client_id):
        self.client_id = client_id
        self.published = []
        self.will = None
        self.connected_to = None
        self.on_connect = None

    def username_pw_set(self, user, password):
        self.auth = (user, password)

    def tls_set(self):
        self.tls = True

    def will_set(self, topic, payload, qos, retain):
        self.will = (topic, payload, retain)

    def max_queued_messages_set(self, n):
        self.max_queued = n

    def connect_async(self, host, port, keepalive):
        self.connected_to = (host, port)

    def loop_start(self):
        self.on_connect(self, None, {}, 0, None)  # "connected" at once

    def loop_stop(self):
        pass

    def disconnect(self):
        pass

    def publish(self, topic, payload, qos=0, retain=False):
        self.published.append((topic, payload, retain))


def test_mqtt_publishes_discovery_availability_and_events():
    sink = MqttSink("127.0.0.1", 1883, username="door", password="s3cret", node_id="front",
                    client_factory=FakeMqttClient).start()
    sink.submit({"event_type": "granted", "person": "Ada"})
    sink.submit({"event_type": "door_opened"})
    assert sink.flush(5)
    sink.close()
    client = sink.client
    assert client.connected_to == ("127.0.0.1", 1883) and client.auth == ("door", "s3cret")
    assert client.will == ("edge/front/availability", "offline", True)
    topics = [t for t, _, _ in client.published]
    assert topics[:3] == ["homeassistant/event/front/access/config", "homeassistant/binary_sensor/front/door/config",
                          "edge/front/availability"]
    config = json.loads(client.published[0][1])
    assert config["state_topic"] == "edge/front/event" and "granted" in config["event_types"]
    assert config["unique_id"] == "edge_front_access" and client.published[0][2] is True
    assert ("edge/front/event", json.dumps({"event_type": "granted", "person": "Ada"}), False) in client.published
    assert ("edge/front/door", "open", True) in client.published
    assert client.published[-1] == ("edge/front/availability", "offline", True)


def test_discovery_can_be_turned_off():
    assert discovery_messages("edge", "", "door") == []


def test_sinks_are_off_by_default():
    assert build_sinks(EventsConfig()) == []


def test_mqtt_without_paho_is_logged_not_raised(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_paho(name, *args, **kwargs):
        if name.startswith("paho"):
            raise ImportError("No module named 'paho'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_paho)
    assert build_sinks(EventsConfig(mqtt_host="127.0.0.1")) == []
    assert "paho-mqtt is not installed" in caplog.text
