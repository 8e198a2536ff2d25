"""Gallery sync: the doors of one site share one set of people through an MQTT broker (``edge sync``).

One module per idea:

* keys.py     - Ed25519 unit keys and the site key list (who may sign changes)
* payload.py  - a person's state or tombstone as one signed message; verification
* conflict.py - which of two states of a person wins (version, unit; forget is final)
* state.py    - publishing this unit's records and applying verified remote ones, through Gallery methods
* client.py   - the MQTT connection (paho): QoS 1, persistent session, bounded queues, reconnect backoff
* service.py  - the ``edge sync`` loop and its status file
* cli.py      - ``edge sync`` (run), ``edge sync status``, ``edge sync keygen``

Offline-first: the recognizer never waits on any of this; it reads its local SQLite and picks up
the changes this process writes there like any other gallery write.
"""
