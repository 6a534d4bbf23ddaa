"""``zmqsec relay`` and ``zmqsec curve-keygen``: forwarding without a key, and CurveZMQ link keys."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from zmqsec.drivers import curve
from zmqsec.drivers.relay import Relay
from zmqsec.drivers.status import StatusFile, Stop

from . import config, options
from .config import Option

log = logging.getLogger("zmqsec")

RELAY = [
    Option("relay", "input", "list", required=True, help="upstream endpoint to connect (repeatable)", flag_name="in"),
    Option("relay", "output", "list", required=True, help="downstream endpoint to bind (repeatable)", flag_name="out"),
    Option("relay", "stream", "list", help="stream to forward (repeatable; default: every stream upstream carries)"),
    Option("relay", "multicast_rate", "int", 10_000, "kbit/s a multicast output may send"),
    options.max_subscriptions("relay"),
    *options.STATUS,
    *options.journal_options("archive", "archive: record every frame that passes into this journal directory, "
           "for replay (docs/PROTOCOL.md §10.6)"),
    Option("curve", "in_server_key", "path", flag_name="curve_in_server_key", help="CurveZMQ upstream: the upstream server's public NAME.key"),
    Option("curve", "in_secret_key", "path", flag_name="curve_in_secret_key", help="CurveZMQ upstream: our NAME.key_secret (default: fresh per run)"),
    Option("curve", "out_secret_key", "path", flag_name="curve_out_secret_key", help="CurveZMQ downstream: our NAME.key_secret as a server"),
    Option("curve", "out_clients", "path", flag_name="curve_out_clients", help="CurveZMQ downstream: directory of allowed clients' NAME.key files"),
]




def cmd_relay(args) -> int:
    """Forward until stopped."""
    settings = config.load(RELAY, args)
    inputs, outputs = list(settings["relay.input"]), list(settings["relay.output"])
    stop = Stop()
    journal = options.journal(settings, "archive")
    relay = Relay(inputs, outputs, streams=list(settings["relay.stream"] or []),
                  curve_in=curve.configured_client(settings["curve.in_server_key"], settings["curve.in_secret_key"]),
                  curve_out=curve.configured_server(settings["curve.out_secret_key"], settings["curve.out_clients"]),
                  multicast_rate=settings["relay.multicast_rate"], journal=journal,
                  replay_endpoints=list(settings["replay.endpoint"] or ()),
                  max_subscriptions=options.subscription_limit(settings, "relay")).start()
    log.info("relay: %s -> %s", ", ".join(inputs), ", ".join(outputs))
    status = StatusFile(settings["status.status_file"], "relay", interval=settings["status.status_interval"])
    try:
        while not stop.requested:
            time.sleep(0.2)
            if status.due():
                status.write(relay.status())
    finally:
        relay.stop()
        status.write(relay.status())
    return 0


def cmd_curve_keygen(args) -> int:
    """Write a CurveZMQ key pair."""
    public, secret = curve.generate(args.dir, args.name)
    print(f"public key {public} (give it to peers), secret key {secret} (mode 0600, keep it here)")
    return 0


def register(subparsers) -> None:
    """Add ``zmqsec relay`` and ``zmqsec curve-keygen``."""
    p = subparsers.add_parser("relay", help="forward streams unchanged (no key), e.g. into a subtree or multicast")
    config.add_flags(p, RELAY)
    p.set_defaults(func=cmd_relay)

    p = subparsers.add_parser("curve-keygen", help="make a CurveZMQ key pair: NAME.key (public) and NAME.key_secret (0600)")
    p.add_argument("name")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write the two files")
    p.set_defaults(func=cmd_curve_keygen)
