"""``edge door``: the relay actuator, a small process that alone touches the lock's GPIO.

It listens on a unix socket (systemd socket activation, else it binds the configured path), takes
unlock requests only from the recognizer's uid (``SO_PEERCRED``), energises the relay for
``door.pulse_seconds`` and fails secure: the relay is driven off at start, at stop, after every pulse,
on any error, and during a lockout after the recognizer floods it.  ``edge door --off`` (the unit's
``ExecStopPost=``) drives it off once more after a crash or SIGKILL, because a GPIO line keeps its last
level when its owner dies.

One idea per module:

* :mod:`.hardware`      the relay and the door contact (gpiozero; its pin factory is the backend)
* :mod:`.limits`        the controller's numbers, checked again: this process must not trust its input
* :mod:`.controller`    pulse, rate limit, flood lockout, door-contact supervision (one writer of the relay)
* :mod:`.server`        the socket server: connections split by SO_PEERCRED, requests to the controller
* :mod:`.eventlog`      actuator events to the journal and an optional JSON-lines file
* :mod:`.prerequisites` what ``edge door`` needs before it starts (also ``edge check-config --for door``)
* :mod:`.cli`           ``edge door``: the wiring, signals, fail-secure exit, ``--off`` and ``--status``

The protocol both sides speak is :mod:`edge.service.protocol`, the recognizer's client
:mod:`edge.service.lock_client`, the socket layer under both :mod:`edge.sockets`.
"""
