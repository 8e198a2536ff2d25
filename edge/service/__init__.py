"""The door service: the recognizer unit (``edge serve``), the relay actuator (``edge door``) and their plumbing.

One idea per module:

* :mod:`.notify`      sd_notify over ``$NOTIFY_SOCKET`` (READY, WATCHDOG, STATUS) without libsystemd
* :mod:`.activation`  socket activation (``$LISTEN_FDS``); binding, ``SO_PEERCRED`` and framing: :mod:`edge.sockets`
* :mod:`.protocol`    the requests between recognizer and actuator, and the door socket's path
* :mod:`.lock_client` the recognizer's side of that protocol
* :mod:`.door`        ``edge door``: the relay, the pulse, rate limits, the door contact (a package)
* :mod:`.events`      journald (structured, MESSAGE_ID per kind) + SQLite audit + optional sinks
* :mod:`.sinks`       MQTT (Home Assistant discovery) and HTTP webhook, each on its own queue
* :mod:`.recognizer_service` ``edge serve``: the recognizer under systemd
"""
