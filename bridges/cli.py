"""``zmqsec bridge stomp-out|stomp-in``: the STOMP bridge daemons, configured like SSM.

Sections: ``[broker]`` (hosts, TLS, login, heart-beats), ``[certificates]``,
``[messaging]`` (destination, queues), ``[signing]``, ``[encryption]``,
``[stream]``, ``[status]``.  Every option is also a flag.
"""

from __future__ import annotations

import logging
import time

from keys.dn import DnAllowList
from keys.errors import ZmqsecError
from keys.pemfiles import Credential, load_certificates
from keys.registry import ReaderRegistry
from keys.trust import CrlPolicy, TrustStore
from zmqsec import config, curve, smime
from zmqsec.config import ConfigError, Option
from zmqsec.daemon import Stop, utc_stamp, write_status
from zmqsec.publisher import Publisher
from zmqsec.spool import IncomingSpool
from zmqsec.stream_cli import CURVE_CLIENT, CURVE_SERVER, publishers
from zmqsec.subscriber import Subscriber

from .outbox import Outbox
from .stomp_in import InSettings, StompInBridge
from .stomp_out import OutSettings, StompOutBridge
from .stomplink import Backoff, BrokerSettings, BrokerUnavailable, StompLink

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
    Option("status", "status_file", "path", help="JSON status file"),
    Option("status", "status_interval", "float", 10.0, "seconds between status updates"),
]
OUT = BROKER + CURVE_CLIENT + [
    Option("messaging", "outbox", "path", required=True, help="durable outbox (dirq) for messages awaiting receipts"),
    Option("signing", "digest", "choice", "sha256", "S/MIME micalg", choices=tuple(smime.MICALG)),
    Option("encryption", "server_cert", "path", help="encrypt to this certificate (the central server); unset: sign only"),
    Option("encryption", "cipher", "choice", "aes256", "content cipher", choices=tuple(smime.CIPHERS)),
    Option("stream", "name", required=True, help="stream to read", flag_name="stream"),
    Option("stream", "endpoint", "list", required=True, help="stream endpoint to connect (repeatable)"),
    Option("stream", "dn", "list", help="DN of the stream's publisher (repeatable); dn or dn_list is required",
           flag_name="publisher_dn"),
    Option("stream", "dn_list", "path", help="file of publisher DNs", flag_name="publisher_dn_list"),
]
IN = BROKER + CURVE_SERVER + [
    Option("messaging", "path", "path", help="incoming dirq queue (SSM schema)", flag_name="incoming"),
    Option("messaging", "reject_path", "path", help="reject dirq queue", flag_name="reject"),
    Option("messaging", "max_bytes", "int", 16 * 1024 * 1024, "larger messages are rejected"),
    Option("messaging", "dn_list", "path", help="SSM-style valid DNs file: signers allowed"),
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


def cmd_stomp_out(args) -> int:
    settings = config.load(OUT, args)
    credential = Credential.load(settings["certificates.certificate"], settings["certificates.key"])
    servers = tuple(load_certificates(settings["encryption.server_cert"])) if settings["encryption.server_cert"] else ()
    link = StompLink(_broker_settings(settings))
    outbox = Outbox(settings["messaging.outbox"])
    bridge = StompOutBridge(link, outbox, credential, OutSettings(
        destination=settings["messaging.destination"], digest=settings["signing.digest"], server_certs=servers,
        cipher=settings["encryption.cipher"]))
    allowed = publishers(settings, "stream")
    subscriber = Subscriber(settings["stream.name"], list(settings["stream.endpoint"]), credential,
                            settings["certificates.capath"], allowed_publishers=allowed,
                            crl=CrlPolicy(settings["certificates.crl"]),
                            curve=curve.configured_client(settings["curve.server_key"], settings["curve.secret_key"]))
    stop, next_status = Stop(), 0.0
    log.info("bridge: stream %s -> %s on %s (%s)", settings["stream.name"], settings["messaging.destination"],
             ", ".join(f"{h}:{p}" for h, p in link.settings.hosts), "sign+encrypt" if servers else "sign")

    def status() -> dict:
        return {"role": "stomp-out", "epoch": subscriber.events.epoch, "outbox": outbox.count(), "broker": "%s:%d" % link.current if link.connected else None,
                **dict(bridge.counters), "stream_rejected": sum(v for k, v in subscriber.counters.items() if k.startswith("rejected:")),
                "updated": utc_stamp()}

    try:
        while not stop.requested:
            message = subscriber.receive(timeout=0.05)
            while message is not None and not stop.requested:
                bridge.take(message)  # in the outbox, fsync'ed, before anything else
                message = subscriber.receive(timeout=0.001) if subscriber.events.ready else None
            bridge.send_pending(time.monotonic())
            now = time.monotonic()
            if now >= next_status:
                next_status = now + settings["status.status_interval"]
                write_status(settings["status.status_file"], status())
    finally:
        write_status(settings["status.status_file"], status())
        subscriber.close()
        link.close()
        outbox.close()
    return 0


def cmd_stomp_in(args) -> int:
    settings = config.load(IN, args)
    credential = Credential.load(settings["certificates.certificate"], settings["certificates.key"])
    trust = TrustStore.from_directory(settings["certificates.capath"])
    incoming = IncomingSpool(settings["messaging.path"], settings["messaging.reject_path"]) if settings["messaging.path"] else None
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
    allowed = DnAllowList.load(settings["messaging.dn_list"]) if settings["messaging.dn_list"] else None
    link = StompLink(_broker_settings(settings))
    bridge = StompInBridge(link, credential, trust, InSettings(
        destination=settings["messaging.destination"], max_bytes=settings["messaging.max_bytes"],
        crl=CrlPolicy(settings["certificates.crl"]), allowed_dns=allowed), incoming=incoming, publisher=publisher)
    backoff = Backoff(link.settings.backoff_initial, link.settings.backoff_max)
    stop, next_status = Stop(), 0.0

    def status() -> dict:
        return {"role": "stomp-in", "broker": "%s:%d" % link.current if link.connected else None,
                **dict(bridge.counters), "updated": utc_stamp()}

    try:
        while not stop.requested:
            now = time.monotonic()
            try:
                if not link.connected:
                    if backoff.due(now):
                        try:
                            link.connect()
                            backoff.succeeded()
                        except BrokerUnavailable as exc:
                            backoff.failed(now)
                            log.warning("%s", exc)
                    time.sleep(0.05)
                else:
                    frame = link.next_message(0.2)
                    if frame is not None:
                        bridge.handle(frame)
            except BrokerUnavailable as exc:
                log.warning("%s; reconnecting", exc)
                link.close()
            except (OSError, ZmqsecError) as exc:
                # Not stored, so not acknowledged: drop the connection and the broker redelivers it later.
                log.error("cannot store a message (%s); reconnecting, the broker will redeliver it", exc)
                link.close()
                backoff.failed(time.monotonic())
            if publisher is not None:
                publisher.tick()
            if now >= next_status:
                next_status = now + settings["status.status_interval"]
                write_status(settings["status.status_file"], status())
    finally:
        write_status(settings["status.status_file"], status())
        link.close()
        if publisher is not None:
            publisher.close()
    return 0


def register(subparsers) -> None:
    bridge = subparsers.add_parser("bridge", help="STOMP bridge to ActiveMQ (EMI accounting protocol)")
    sub = bridge.add_subparsers(dest="bridge_command", required=True, metavar="COMMAND")
    p = sub.add_parser("stomp-out", help="stream -> broker: sign (and encrypt) each message as EMI S/MIME")
    config.add_flags(p, OUT)
    p.set_defaults(func=cmd_stomp_out)
    p = sub.add_parser("stomp-in", help="broker -> incoming queue and/or stream: verify, store, then ack")
    config.add_flags(p, IN)
    p.set_defaults(func=cmd_stomp_in)
