"""sd_notify over $NOTIFY_SOCKET, watchdog pacing, socket-activation parsing, journald fields."""

from __future__ import annotations

import os
import socket
import uuid


from edge.service.activation import listen_fds
from edge.service.events import MESSAGE_IDS, Event, EventBus, Journal
from edge.service.notify import Notifier, Watchdog, watchdog_interval


def _bound(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(2)
    return sock


def test_notify_sends_key_value_datagrams(tmp_path):
    server = _bound(tmp_path)
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert notifier.enabled
    assert notifier.ready("warm\nup")
    message = server.recv(4096).decode().split("\n")
    assert message[0] == "READY=1" and "STATUS=warm up" in message and f"MAINPID={os.getpid()}" in message
    notifier.status("12.0 fps")
    assert server.recv(4096) == b"STATUS=12.0 fps"


def test_notify_reaches_abstract_sockets():
    name = f"edge-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    assert Notifier(environ={"NOTIFY_SOCKET": "@" + name}).send(WATCHDOG=1)
    assert server.recv(100) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd(tmp_path):
    assert not Notifier(environ={}).enabled
    assert Notifier(environ={}).ready() is False
    assert Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).send(READY=1) is False  # never raises


def test_watchdog_interval_honours_watchdog_pid():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_watchdog_pings_at_most_every_half_interval(tmp_path):
    server = _bound(tmp_path)
    dog = Watchdog(Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}), 2.0)
    sent = [dog.kick(now=t) for t in (100.0, 100.5, 100.99, 101.0, 101.2, 102.1)]
    assert sent == [True, False, False, True, False, True]
    assert server.recv(100) == b"WATCHDOG=1"
    assert not Watchdog(Notifier(environ={}), 2.0).kick()


def test_listen_fds_only_for_this_pid():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_fds(environ=env) == [] and "LISTEN_FDS" not in env
    assert listen_fds(environ={"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == []


def test_journal_fallback_logs_structured_fields(caplog):
    journal = Journal("edge-test", use_journal=False)
    assert not journal.structured
    caplog.set_level("DEBUG", logger="edge.events")
    journal.write(Event("granted", "granted Ada", person="Ada Lovelace", distance=0.61234, frames=3, model="m:1"))
    line = caplog.records[-1].getMessage()
    assert line.startswith("granted: granted Ada") and "PERSON='Ada Lovelace'" in line and "DISTANCE=0.6123" in line


def test_journal_send_gets_message_id_and_fields(monkeypatch):
    sent = []
    journal = Journal("edge-test", use_journal=False)
    journal._send = lambda **fields: sent.append(fields)
    journal.write(Event("unlock", "door unlocked for Ada", person="Ada", distance=0.5, frames=3, model="m:1",
                        detail={"pulse_s": 3.0}))
    fields = sent[0]
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["unlock"] and fields["PERSON"] == "Ada"
    assert fields["DISTANCE"] == "0.5000" and fields["FRAMES"] == "3" and fields["MODEL"] == "m:1"
    assert fields["EDGE_EVENT"] == "unlock" and fields["EDGE_PULSE_S"] == "3.0" and fields["PRIORITY"] == "5"


def test_message_ids_are_distinct_128_bit_ids():
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in MESSAGE_IDS.values())


def test_a_failing_audit_write_does_not_stop_the_bus():
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    delivered = []

    class Sink:
        def submit(self, event):
            delivered.append(event)

    bus = EventBus(Journal(use_journal=False), audit=broken, sinks=[Sink()])
    bus.emit(Event("unlock", "door unlocked"))
    assert delivered[0]["event_type"] == "unlock"


def test_a_full_notify_queue_drops_pings_instead_of_blocking(tmp_path):
    import time

    server = _bound(tmp_path)  # never read: the queue fills up
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    started = time.monotonic()
    results = [notifier.send(WATCHDOG=1) for _ in range(2000)]
    assert time.monotonic() - started < 2.0
    assert results[0] is True and results[-1] is False
    server.close()


def test_a_journal_error_falls_back_to_the_log_line(caplog):
    journal = Journal("edge-test", use_journal=False)

    def refuse(**fields):
        raise ValueError("sd_journal_sendv failed")  # what systemd-python raises

    journal._send = refuse
    caplog.set_level("INFO", logger="edge.events")
    journal.write(Event("unlock", "door unlocked for Ada", person="Ada"))
    assert "unlock: door unlocked for Ada" in caplog.text
