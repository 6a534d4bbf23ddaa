"""``zmqsec publish``: publish an outgoing spool as an encrypted stream."""

from __future__ import annotations

import logging

from zmqsec.crypto.enveloped import KeyTransport
from zmqsec.drivers import curve
from zmqsec.drivers.publisher import Publisher
from zmqsec.drivers.spool import OutgoingSpool
from zmqsec.drivers.spooling import SpoolPublisher
from zmqsec.drivers.status import StatusFile, Stop
from zmqsec.errors import ConfigError
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import CrlPolicy
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol.primitives import MAX_PAYLOAD

from . import config
from .config import Option
from . import options
from .options import COMMON, CURVE_SERVER, credential

log = logging.getLogger("zmqsec")

PUBLISH = COMMON + CURVE_SERVER + [
    Option("publisher", "endpoint", "list", required=True, help="endpoint to bind (repeatable): tcp://, ipc://, epgm://, norm://"),
    Option("publisher", "multicast_rate", "int", 10_000, "kbit/s a multicast (epgm://, norm://) endpoint may send"),
    options.max_subscriptions("publisher"),
    Option("readers", "registry", "path", required=True, help="directory of authorized reader certificates"),
    Option("readers", "dn_list", "path", help="SSM-style DN allow-list narrowing the registry"),
    Option("rotation", "max_age", "float", 3600.0, "seconds before the data key rotates"),
    Option("rotation", "max_messages", "int", 1_000_000, "messages before the data key rotates"),
    Option("rotation", "max_bytes", "int", 1 << 30, "payload bytes before the data key rotates"),
    Option("rotation", "reannounce_interval", "float", 1.0, "seconds between re-announcements of the current key"),
    Option("rotation", "checkpoint_interval", "float", 0.02, "seconds a message may wait for its signed checkpoint"),
    Option("rotation", "checkpoint_min_interval", "float", 0.002, "seconds between two checkpoints at least (more "
           "when a signature is slow: signing takes at most a fifth of a core); a message waits about this long"),
    Option("rotation", "checkpoint_max", "int", 256, "messages per checkpoint at most"),
    Option("rotation", "key_transport", "choice", "oaep", "RSA key transport for reader envelopes", choices=("oaep", "pkcs1v15")),
    Option("rotation", "group_size", "int", 0, "0: one envelope wraps each key for every reader; N: readers in groups of "
           "about N with their own group keys, so a rekey sends each reader a bounded announcement (large registries)"),
    Option("rotation", "mode", "choice", "auto", "how each epoch key reaches the readers: single (one envelope for "
           "every reader), groups (reader groups of about group_size), tree (a key tree: a revocation sends each "
           "remaining reader one small update, docs/PROTOCOL.md §4.6); auto: groups if group_size is set, else single",
           choices=("auto", "single", "groups", "tree"), flag_name="rotation_mode"),
    Option("rotation", "group_reannounce_interval", "float", 4.0, "seconds between re-announcements of the group keys "
           "(keep it under the readers' 5 s key wait, or multicast joiners lose their first frames)"),
    Option("messaging", "path", "path", help="outgoing spool: each message in it is published, then removed", flag_name="outgoing"),
    Option("messaging", "spool", "choice", "dirq", "outgoing spool format", choices=("dirq", "directory")),
    Option("messaging", "poll_interval", "float", 0.2, "seconds between outgoing spool scans"),
    Option("messaging", "reject_path", "path", help="where refused outgoing items (oversized, unreadable) are moved "
           "with a .reason file (default: the spool's path + .reject)", flag_name="outgoing_reject"),
    *options.journal_options("journal", "directory of the journal: every frame sent, for replay; with it a "
           "spool item leaves only once journaled, and a restart publishes nothing twice"),
    Option("messaging", "settle", "float", 1.0, "a file written in place into a plain-directory spool is taken once "
           "unchanged this many seconds"),
]


def rotation_policy(settings) -> RotationPolicy:
    """The ``[rotation]`` section as a validated policy."""
    try:
        return RotationPolicy(
            max_age=settings["rotation.max_age"], max_messages=settings["rotation.max_messages"],
            max_bytes=settings["rotation.max_bytes"], reannounce_interval=settings["rotation.reannounce_interval"],
            checkpoint_interval=settings["rotation.checkpoint_interval"],
            checkpoint_min_interval=settings["rotation.checkpoint_min_interval"],
            checkpoint_max=settings["rotation.checkpoint_max"],
            transport=KeyTransport.OAEP if settings["rotation.key_transport"] == "oaep" else KeyTransport.PKCS1V15,
            group_size=settings["rotation.group_size"],
            mode="" if settings["rotation.mode"] == "auto" else settings["rotation.mode"],
            group_reannounce_interval=settings["rotation.group_reannounce_interval"])
    except ValueError as exc:
        raise ConfigError(f"{settings.source}: [rotation] {exc}") from None


def cmd_publish(args) -> int:
    """Publish the outgoing spool until stopped."""
    settings = config.load(PUBLISH, args)
    policy = rotation_policy(settings)
    registry = ReaderRegistry(settings["readers.registry"], settings["readers.dn_list"])
    spool = (OutgoingSpool(settings["messaging.path"], settings["messaging.spool"], reject=settings["messaging.reject_path"],
                           max_bytes=MAX_PAYLOAD, settle=settings["messaging.settle"], exclusive=True)
             if settings["messaging.path"] else None)
    stop = Stop()
    journal = options.journal(settings, "journal")
    publisher = Publisher(settings["stream.name"], list(settings["publisher.endpoint"]), credential(settings), registry,
                          trust_dir=settings["certificates.capath"], crl=CrlPolicy(settings["certificates.crl"]),
                          policy=policy,
                          curve=curve.configured_server(settings["curve.secret_key"], settings["curve.clients"]),
                          multicast_rate=settings["publisher.multicast_rate"], journal=journal,
                          replay_endpoints=list(settings["replay.endpoint"] or ()),
                          max_subscriptions=options.subscription_limit(settings, "publisher"))
    log.info("stream %s: publishing on %s to %d reader(s)", settings["stream.name"],
             ", ".join(publisher.endpoints), publisher.stats.readers)
    status = StatusFile(settings["status.status_file"], "publisher", stream=settings["stream.name"],
                        interval=settings["status.status_interval"])
    SpoolPublisher(publisher, spool, status, settings["messaging.poll_interval"]).run(stop, args.exit_when_idle)
    return 0


def register(subparsers) -> None:
    """Add ``zmqsec publish``."""
    p = subparsers.add_parser("publish", help="publish a spool as an encrypted stream")
    config.add_flags(p, PUBLISH)
    p.add_argument("--exit-when-idle", type=float, default=0, metavar="SECONDS",
                   help="exit after the spool has been empty this long (batch runs)")
    p.set_defaults(func=cmd_publish)
