"""``zmqsec subscribe``: read an encrypted stream into an incoming spool (or stdout)."""

from __future__ import annotations

from pathlib import Path

from zmqsec.drivers import curve
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.drivers.links import MAX_QUEUED_BYTES
from zmqsec.drivers.mending import PositionFile
from zmqsec.drivers.spooling import SpoolReader, recover
from zmqsec.drivers.status import StatusFile, Stop
from zmqsec.drivers.subscriber import Subscriber
from zmqsec.keys.trust import CrlPolicy
from zmqsec.machines.events import ReceiverPolicy

from . import config
from .config import Option
from .options import COMMON, CURVE_CLIENT, credential, publishers

SUBSCRIBE = COMMON + CURVE_CLIENT + [
    Option("subscriber", "endpoint", "list", required=True, help="endpoint to connect (repeatable)"),
    Option("subscriber", "replay", "list", help="replay endpoint of an archive relay or of the publisher, in order of "
           "preference (repeatable): what the reader missed is fetched from there", flag_name="replay"),
    Option("subscriber", "state", "path", help="the reader's position file (default: the incoming spool's path "
           "+ .state.json); with it a restarted reader resumes where it stopped"),
    Option("subscriber", "max_held_bytes", "int", ReceiverPolicy.max_held_bytes, "bytes of frames the reader holds "
           "at most while they wait for their key or checkpoint; beyond, frames are refused [overloaded]"),
    Option("subscriber", "max_queued_bytes", "int", MAX_QUEUED_BYTES, "bytes of frames the reader's receive queues "
           "(libzmq's, one per endpoint, an equal share each) hold at most before it takes them; a full queue stops "
           "reading its connection"),
    Option("publishers", "dn", "list", help="DN of the publisher whose stream this is (repeatable); "
           "dn or dn_list is required", flag_name="publisher_dn"),
    Option("publishers", "dn_list", "path", help="SSM-style file of publisher DNs", flag_name="publisher_dn_list"),
    Option("messaging", "path", "path", help="incoming dirq queue (SSM schema: body, signer, empaid); default stdout", flag_name="incoming"),
    Option("messaging", "reject_path", "path", help="reject dirq queue for messages that cannot be stored", flag_name="reject"),
]




def cmd_subscribe(args) -> int:
    """Store the stream's verified messages until stopped."""
    settings = config.load(SUBSCRIBE, args)
    allowed = publishers(settings, "publishers")
    spool = (IncomingSpool(settings["messaging.path"], settings["messaging.reject_path"])
             if settings["messaging.path"] else None)
    state = settings["subscriber.state"] or (
        Path(f"{settings['messaging.path']}.state.json") if settings["messaging.path"] else None)
    position_file = PositionFile(state) if state else None
    positions = position_file.load() if position_file else None
    if positions is not None and spool is not None:
        recover(positions, spool, settings["stream.name"])
    stop = Stop()
    link_curve = curve.configured_client(settings["curve.server_key"], settings["curve.secret_key"])
    subscriber = Subscriber(settings["stream.name"], list(settings["subscriber.endpoint"]), credential(settings),
                            settings["certificates.capath"], allowed_publishers=allowed,
                            crl=CrlPolicy(settings["certificates.crl"]), curve=link_curve,
                            replay=list(settings["subscriber.replay"] or ()), positions=positions,
                            max_queued_bytes=settings["subscriber.max_queued_bytes"],
                            policy=ReceiverPolicy(max_held_bytes=settings["subscriber.max_held_bytes"]))
    status = StatusFile(settings["status.status_file"], "subscriber", stream=settings["stream.name"],
                        interval=settings["status.status_interval"])
    SpoolReader(subscriber, spool, status, position_file).run(stop, args.count, args.exit_when_idle)
    return 0


def register(subparsers) -> None:
    """Add ``zmqsec subscribe``."""
    p = subparsers.add_parser("subscribe", help="read an encrypted stream into an incoming spool (or stdout)")
    config.add_flags(p, SUBSCRIBE)
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--exit-when-idle", type=float, default=0, metavar="SECONDS",
                   help="exit after this long without a message")
    p.set_defaults(func=cmd_subscribe)
