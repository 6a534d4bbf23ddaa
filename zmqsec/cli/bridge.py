"""``zmqsec bridge stomp-out|stomp-in``: the STOMP bridge daemons, configured like SSM.

Sections: ``[broker]`` (hosts, TLS, login, heart-beats), ``[certificates]``,
``[messaging]`` (destination, queues), ``[signing]``, ``[encryption]``, ``[verifying]``,
``[stream]``, ``[status]``.  Every option is also a flag.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zmqsec.bridges import smime
from zmqsec.bridges.outbox import LocalRejects, Outbox
from zmqsec.bridges.workers import default_workers
from zmqsec.bridges.stomp_in import InSettings, StompInBridge
from zmqsec.bridges.stomp_out import OutSettings, StompOutBridge
from zmqsec.bridges.stomplink import BrokerSettings, StompLink
from zmqsec.drivers import curve
from zmqsec.drivers.mending import PositionFile
from zmqsec.drivers.publisher import Publisher
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.drivers.status import StatusFile, Stop
from zmqsec.drivers.subscriber import Subscriber
from zmqsec.drivers.watch import SignerWatch
from zmqsec.errors import ConfigError
from zmqsec.keys.pemfiles import Credential, load_certificates
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import CrlPolicy

from . import config
from .config import Option
from .options import CURVE_CLIENT, CURVE_SERVER, STATUS, publishers

log = logging.getLogger("zmqsec.bridge")

BROKER = [
    Option("broker", "hosts", "list", required=True, help="HOST:PORT of each broker, tried in order (failover)"),
    Option("broker", "use_ssl", "bool", "no", "STOMP over TLS with our certificate as client certificate"),
    Option("broker", "ca_certs", "path", help="CA file for the broker's TLS certificate"),
    Option("broker", "login", help="STOMP login"),
    Option("broker", "passcode", help="STOMP passcode"),
    Option("broker", "heartbeat", "int", 10000, "STOMP heart-beat in milliseconds (0: none)"),
    Option("certificates", "certificate", "path", required=True, help="our host certificate (signs; TLS client)"),
    Option("certificates", "key", "path", required=True, help="its private key (mode 0600)"),
    Option("certificates", "capath", "path", required=True, help="hashed CA directory"),
    Option("certificates", "crl", "choice", "require", "CRL checking", choices=tuple(c.value for c in CrlPolicy)),
    Option("messaging", "destination", required=True, help="STOMP destination, e.g. /queue/global.accounting.cpu.central"),
    *STATUS,
]
OUT = BROKER + CURVE_CLIENT + [
    Option("messaging", "outbox", "path", required=True, help="durable outbox (a directory holding an SQLite database) for messages awaiting receipts"),
    Option("messaging", "reject_path", "path", help="local reject queue (dirq) for payloads no SSM receiver can "
           "store (not UTF-8): kept there with the reason, never sent (default: the outbox's path + .reject)",
           flag_name="reject"),
    Option("signing", "digest", "choice", "sha256", "S/MIME micalg", choices=tuple(smime.MICALG)),
    Option("signing", "workers", "int", 0, "processes that sign and encrypt (0: one per core; 1: in the bridge "
           "process itself)", flag_name="sign_workers"),
    Option("encryption", "server_cert", "path", help="encrypt to this certificate (the central server); unset: sign only"),
    Option("encryption", "cipher", "choice", "aes256", "content cipher", choices=tuple(smime.CIPHERS)),
    Option("stream", "name", required=True, help="stream to read", flag_name="stream"),
    Option("stream", "endpoint", "list", required=True, help="stream endpoint to connect (repeatable)"),
    Option("stream", "dn", "list", help="DN of the stream's publisher (repeatable); dn or dn_list is required",
           flag_name="publisher_dn"),
    Option("stream", "dn_list", "path", help="file of publisher DNs", flag_name="publisher_dn_list"),
    Option("stream", "replay", "list", help="replay endpoint of an archive relay or of the publisher, in order of "
           "preference (repeatable): what the bridge missed while down is fetched from there", flag_name="replay"),
    Option("stream", "state", "path", help="the bridge's position file (default: the outbox's path + .state.json)"),
]
IN = BROKER + CURVE_SERVER + [
    Option("messaging", "path", "path", help="incoming dirq queue (SSM schema)", flag_name="incoming"),
    Option("messaging", "reject_path", "path", help="reject dirq queue", flag_name="reject"),
    Option("messaging", "max_bytes", "int", 16 * 1024 * 1024, "larger messages are rejected"),
    Option("messaging", "dn_list", "path", help="SSM-style valid DNs file: the signers allowed (required, re-read "
           "when it changes, as the CA directory and its CRLs are)"),
    Option("messaging", "accept_any_signer", "bool", "no", "accept any signer certificate from the trusted CAs, "
           "without a dn_list (logged at start)"),
    Option("verifying", "workers", "int", 0, "processes that decrypt and verify (0: one per core; 1: in the bridge "
           "process itself)", flag_name="verify_workers"),
    Option("stream", "name", help="also publish accepted messages on this stream", flag_name="stream"),
    Option("stream", "endpoint", "list", help="endpoint to bind for that stream"),
    Option("stream", "registry", "path", help="reader registry for that stream"),
]


def _broker_settings(settings) -> BrokerSettings:
    try:
        hosts = BrokerSettings.parse_hosts(settings["broker.hosts"])
    except ValueError as exc:
        raise ConfigError(f"[broker] hosts: {exc}") from None
    return BrokerSettings(
        hosts=hosts, use_ssl=settings["broker.use_ssl"], cert=settings["certificates.certificate"],
        key=settings["certificates.key"], ca_certs=settings["broker.ca_certs"], login=settings["broker.login"],
        passcode=settings["broker.passcode"], heartbeat_ms=settings["broker.heartbeat"])


def _status(settings, role: str) -> StatusFile:
    return StatusFile(settings["status.status_file"], role, stream=settings["stream.name"],
                      interval=settings["status.status_interval"])


def cmd_stomp_out(args) -> int:
    """Bridge a stream to the broker until stopped."""
    settings = config.load(OUT, args)
    if settings["signing.workers"] < 0:
        raise ConfigError(f"{settings.source}: [signing] workers must be 0 (one per core) or more")
    credential = Credential.load(settings["certificates.certificate"], settings["certificates.key"])
    servers = tuple(load_certificates(settings["encryption.server_cert"])) if settings["encryption.server_cert"] else ()
    link = StompLink(_broker_settings(settings))
    outbox = Outbox(settings["messaging.outbox"])
    rejects = LocalRejects(settings["messaging.reject_path"]) if settings["messaging.reject_path"] else None
    bridge = StompOutBridge(link, outbox, credential, OutSettings(
        destination=settings["messaging.destination"], digest=settings["signing.digest"], server_certs=servers,
        cipher=settings["encryption.cipher"], workers=settings["signing.workers"] or default_workers()),
        rejects=rejects)
    position_file = PositionFile(settings["stream.state"] or Path(f"{settings['messaging.outbox']}.state.json"))
    positions = position_file.load()
    positions.adopt(settings["stream.name"].encode(), outbox.message_ids())  # taken before a crash, not yet saved
    subscriber = Subscriber(settings["stream.name"], list(settings["stream.endpoint"]), credential,
                            settings["certificates.capath"], allowed_publishers=publishers(settings, "stream"),
                            crl=CrlPolicy(settings["certificates.crl"]),
                            curve=curve.configured_client(settings["curve.server_key"], settings["curve.secret_key"]),
                            replay=list(settings["stream.replay"] or ()), positions=positions)
    log.info("bridge: stream %s -> %s on %s (%s)", settings["stream.name"], settings["messaging.destination"],
             ", ".join(f"{h}:{p}" for h, p in link.settings.hosts), "sign+encrypt" if servers else "sign")
    bridge.run(subscriber, Stop(), _status(settings, "stomp-out"), position_file)
    return 0


def cmd_stomp_in(args) -> int:
    """Take EMI messages from the broker until stopped."""
    settings = config.load(IN, args)
    if settings["verifying.workers"] < 0:
        raise ConfigError(f"{settings.source}: [verifying] workers must be 0 (one per core) or more")
    credential = Credential.load(settings["certificates.certificate"], settings["certificates.key"])
    signers = SignerWatch(Path(settings["certificates.capath"]), settings["messaging.dn_list"])
    if signers.allowed is None and not settings["messaging.accept_any_signer"]:
        raise ConfigError("stomp-in needs [messaging] dn_list (--dn-list), the SSM-style file of the signers "
                          "allowed; or accept_any_signer = yes (--accept-any-signer yes) for any signer of the "
                          "trusted CAs")
    if signers.allowed is not None and not signers.allowed.dns:
        raise ConfigError(f"{settings['messaging.dn_list']}: the DN list allows no signer (only comments or blank "
                          "lines)")
    if signers.allowed is None:
        log.warning("bridge stomp-in: accept_any_signer: any signer certificate from the CAs in %s is accepted",
                    settings["certificates.capath"])
    incoming = (IncomingSpool(settings["messaging.path"], settings["messaging.reject_path"])
                if settings["messaging.path"] else None)
    publisher = None
    if settings["stream.name"]:
        if not (settings["stream.endpoint"] and settings["stream.registry"]):
            raise ConfigError("[stream] name needs [stream] endpoint and [stream] registry to publish on")
        publisher = Publisher(settings["stream.name"], list(settings["stream.endpoint"]), credential,
                              ReaderRegistry(settings["stream.registry"]), trust_dir=settings["certificates.capath"],
                              crl=CrlPolicy(settings["certificates.crl"]),
                              curve=curve.configured_server(settings["curve.secret_key"], settings["curve.clients"]))
    if incoming is None and publisher is None:
        raise ConfigError("stomp-in needs [messaging] path (incoming queue) or a [stream] to publish on")
    bridge = StompInBridge(StompLink(_broker_settings(settings)), credential, signers.trust, InSettings(
        destination=settings["messaging.destination"], max_bytes=settings["messaging.max_bytes"],
        crl=CrlPolicy(settings["certificates.crl"]), allowed_dns=signers.allowed,
        workers=settings["verifying.workers"] or default_workers()), incoming=incoming,
        publisher=publisher, signers=signers)
    bridge.run(Stop(), _status(settings, "stomp-in"))
    return 0


def register(subparsers) -> None:
    """Add ``zmqsec bridge stomp-out|stomp-in``."""
    bridge = subparsers.add_parser("bridge", help="STOMP bridge to ActiveMQ (EMI accounting protocol)")
    sub = bridge.add_subparsers(dest="bridge_command", required=True, metavar="COMMAND")
    p = sub.add_parser("stomp-out", help="stream -> broker: sign (and encrypt) each message as EMI S/MIME")
    config.add_flags(p, OUT)
    p.set_defaults(func=cmd_stomp_out)
    p = sub.add_parser("stomp-in", help="broker -> incoming queue and/or stream: verify, store, then ack")
    config.add_flags(p, IN)
    p.set_defaults(func=cmd_stomp_in)
