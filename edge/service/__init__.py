"""The door service: the recognizer unit (``edge serve``), the relay actuator (``edge door``) and their plumbing.

One idea per module:

* :mod:`.notify`      sd_notify over ``$NOTIFY_SOCKET`` (READY, WATCHDOG, STATUS) without libsystemd
* :mod:`.activation`  socket activation (``$LISTEN_FDS``) and ``SO_PEERCRED``
* :mod:`.protocol`    the JSON-line protocol between recognizer and actuator
* :mod:`.lock_client` the recognizer's side of that protocol
* :mod:`.actuator`    ``edge door``: the relay, the pulse, rate limits, the door contact
* :mod:`.events`      journald (structured, MESSAGE_ID per kind) + SQLite audit + optional sinks
* :mod:`.sinks`       MQTT (Home Assistant discovery) and HTTP webhook, each on its own queue
* :mod:`.recognizer_service` ``edge serve``: the recognizer under systemd
"""
