"""``edge door``: wire hardware, controller, server and event log together; fail secure on every way out."""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import sys
import time
from pathlib import Path

import click

from ...errors import EdgeError
from ...sockets import UnixListener, bind_unix_listener
from ..activation import inherited_unix_listener
from ..events import Event
from ..notify import Notifier, Watchdog, watchdog_interval
from ..protocol import socket_path
from . import prerequisites
from .controller import DoorController
from .eventlog import EventWriter
from .hardware import Contact, Relay, force_off
from .server import LISTEN_BACKLOG, ActuatorServer

log = logging.getLogger(__name__)


def _listener(config, allowed_uid: int) -> tuple[UnixListener, str]:
    inherited = inherited_unix_listener()
    if inherited is not None:
        return UnixListener(inherited), "socket activation"  # no path: systemd owns the file
    path = socket_path(config)
    # Who may unlock is decided by SO_PEERCRED; the file mode decides who may connect at all, and
    # every connection costs the actuator a slot.  0660 like edge-door.socket: root and the socket's
    # group, which is made the recognizer's so that it can reach the socket without anyone else.
    # A path another actuator still serves is refused (SocketInUseError), never taken over.
    listener = bind_unix_listener(path, mode=0o660, backlog=LISTEN_BACKLOG)
    _give_to_recognizer_group(path, allowed_uid)
    return listener, str(path)


def _give_to_recognizer_group(path: Path, allowed_uid: int) -> None:
    try:
        gid = pwd.getpwuid(allowed_uid).pw_gid
    except KeyError:
        log.warning("door socket %s: uid %d has no passwd entry; the socket stays in group %d, mode 0660",
                    path, allowed_uid, os.getegid())
        return
    if gid == os.stat(path).st_gid:
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        # Not fatal: root still reaches it, and the operator may have made the recognizer a member.
        log.warning("door socket %s: cannot give it to group %d (the recognizer's, uid %d): it stays in group "
                    "%d, mode 0660; run edge-door.socket, or add the recognizer to that group",
                    path, gid, allowed_uid, os.stat(path).st_gid)


def run_actuator(config) -> int:
    """Serve until SIGTERM/SIGINT; the relay is off before anything else and after everything else."""
    door = config.door
    allowed_uid = prerequisites.check(door)
    writer = EventWriter(Path(door.events_log) if door.events_log else None)
    relay = Relay(door.relay_pin, door.active_high)  # initial_value=False: off before anything else
    contact = None
    server = None
    listener: UnixListener | None = None
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    try:
        contact = Contact(door.contact_pin, door.contact_pull_up) if door.contact_pin >= 0 else None
        controller = DoorController(door, relay, contact, writer)
        listener, where = _listener(config, allowed_uid)
        notifier = Notifier()
        server = ActuatorServer(listener.sock, controller, allowed_uid, notifier,
                                Watchdog(notifier, watchdog_interval()))

        def _stop(signum, _frame):
            server.stopping = True

        for sig in stop_signals:
            signal.signal(sig, _stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("edge door: relay GPIO%d (%s), pulse %.1f s, unlocks from uid %d, listening on %s",
                 door.relay_pin, "active high" if door.active_high else "active low", door.pulse_seconds,
                 allowed_uid, where)
        server.serve()
        notifier.stopping("relay off, stopping")
        return 0
    finally:
        # Fail secure on every way out: normal stop, EdgeError, a bug.
        try:
            relay.close()
        finally:
            writer(Event("relay", "relay off (stop)", detail={"on": False, "reason": "stop"}),
                   {"seq": -1, "mono": round(time.monotonic(), 4), "event_type": "relay", "on": False,
                    "reason": "stop"})
            writer.close()
            if contact is not None:
                contact.close()
            if server is not None:
                server.close()
            if listener is not None:
                listener.close()  # removes the socket file only while it is still this process's


def _cli():
    from ...cli import boundary, config_option

    @click.command("door")
    @config_option
    @click.option("--off", "off_only", is_flag=True,
                  help="Drive the relay off and exit (the unit's ExecStopPost=, after a crash or SIGKILL).")
    @click.option("--status", "show_status", is_flag=True,
                  help="Ask the running actuator for its state (relay, door, counters) and print it as JSON.")
    @boundary
    def command(config_path, off_only, show_status):
        """Run the door actuator: the relay behind a unix socket that only the recognizer may use."""
        from ...cli import _load, _setup_logging
        from ..lock_client import DoorClient

        config = _load(config_path)
        _setup_logging(config.log_level)
        if show_status:
            # DoorUnavailable is a DoorError: exit 69, with the socket named.
            click.echo(json.dumps(DoorClient(str(socket_path(config)), config.door.request_timeout).status()))
            return
        if off_only:
            force_off(config.door)
            click.echo(f"relay GPIO{config.door.relay_pin} off")
            return
        try:
            code = run_actuator(config)
        except EdgeError:
            raise
        except Exception:
            log.exception("edge door: unexpected failure (relay driven off)")
            sys.exit(70)  # EX_SOFTWARE: Restart=on-failure brings it back, relay off at start
        sys.exit(code)

    return command


command = _cli()
