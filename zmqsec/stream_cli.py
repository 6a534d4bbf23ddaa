"""``zmqsec publish|subscribe|capture|inspect|decrypt|status``: thin runners over the library.

Each command builds its settings with the one config loader (INI file plus
flags), opens credentials through the trust layer, and runs a loop that only
moves bytes between spools, sockets and files; every decision is made in
``zmqsec.sender`` / ``zmqsec.receiver``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import zmq

from keys.dn import DnAllowList, slash_dn
from keys.pemfiles import Credential
from keys.registry import ReaderRegistry
from keys.trust import CrlPolicy

from . import cms, config, curve, frames
from .config import Option
from .daemon import Stop, utc_stamp, write_status
from .publisher import Publisher
from .receiver import Delivered, Rejected, StreamReceiver
from .sender import NoReaders, RotationPolicy
from .spool import IncomingSpool, OutgoingSpool
from .subscriber import Subscriber

log = logging.getLogger("zmqsec")

COMMON = [
    Option("stream", "name", required=True, help="stream name (the ZeroMQ topic prefix)", flag_name="stream"),
    Option("certificates", "certificate", "path", required=True, help="our certificate (PEM)"),
    Option("certificates", "key", "path", required=True, help="our private key (PEM, mode 0600)"),
    Option("certificates", "capath", "path", required=True, help="hashed CA directory, e.g. /etc/grid-security/certificates"),
    Option("certificates", "crl", "choice", "require", "CRL checking", choices=tuple(c.value for c in CrlPolicy)),
    Option("status", "status_file", "path", help="JSON status written every status interval and at exit"),
    Option("status", "status_interval", "float", 10.0, "seconds between status updates and status log lines"),
]
CURVE_SERVER = [  # a daemon that binds (publisher, stomp-in's stream)
    Option("curve", "secret_key", "path", help="CurveZMQ: our NAME.key_secret (zmqsec curve-keygen); tcp links are then "
           "encrypted and authenticated per link", flag_name="curve_secret_key"),
    Option("curve", "clients", "path", help="CurveZMQ: directory of the NAME.key files of the only clients allowed to "
           "connect (default: any client that knows our public key)", flag_name="curve_clients"),
]
CURVE_CLIENT = [  # a daemon that connects (reader, stomp-out)
    Option("curve", "server_key", "path", help="CurveZMQ: the publisher's (or relay's) public NAME.key; enables CURVE "
           "on our connections", flag_name="curve_server_key"),
    Option("curve", "secret_key", "path", help="CurveZMQ: our own NAME.key_secret, when the server admits named "
           "clients only (default: a fresh key pair per run)", flag_name="curve_secret_key"),
]
PUBLISH = COMMON + CURVE_SERVER + [
    Option("publisher", "endpoint", "list", required=True, help="endpoint to bind (repeatable): tcp://, ipc://, epgm://, norm://"),
    Option("publisher", "multicast_rate", "int", 10_000, "kbit/s a multicast (epgm://, norm://) endpoint may send"),
    Option("readers", "registry", "path", required=True, help="directory of authorized reader certificates"),
    Option("readers", "dn_list", "path", help="SSM-style DN allow-list narrowing the registry"),
    Option("rotation", "max_age", "float", 3600.0, "seconds before the data key rotates"),
    Option("rotation", "max_messages", "int", 1_000_000, "messages before the data key rotates"),
    Option("rotation", "max_bytes", "int", 1 << 30, "payload bytes before the data key rotates"),
    Option("rotation", "reannounce_interval", "float", 1.0, "seconds between re-announcements of the current key"),
    Option("rotation", "checkpoint_interval", "float", 0.02, "seconds a message may wait for its signed checkpoint"),
    Option("rotation", "checkpoint_max", "int", 256, "messages per checkpoint at most"),
    Option("rotation", "key_transport", "choice", "oaep", "RSA key transport for reader envelopes", choices=("oaep", "pkcs1v15")),
    Option("rotation", "group_size", "int", 0, "0: one envelope wraps each key for every reader; N: readers in groups of "
           "about N with their own group keys, so a rekey sends each reader a bounded announcement (large registries)"),
    Option("rotation", "group_reannounce_interval", "float", 4.0, "seconds between re-announcements of the group keys "
           "(keep it under the readers' 5 s key wait, or multicast joiners lose their first frames)"),
    Option("messaging", "path", "path", help="outgoing spool: each message in it is published, then removed", flag_name="outgoing"),
    Option("messaging", "spool", "choice", "dirq", "outgoing spool format", choices=("dirq", "directory")),
    Option("messaging", "poll_interval", "float", 0.2, "seconds between outgoing spool scans"),
]
SUBSCRIBE = COMMON + CURVE_CLIENT + [
    Option("subscriber", "endpoint", "list", required=True, help="endpoint to connect (repeatable)"),
    Option("publishers", "dn", "list", help="DN of the publisher whose stream this is (repeatable); "
           "dn or dn_list is required", flag_name="publisher_dn"),
    Option("publishers", "dn_list", "path", help="SSM-style file of publisher DNs", flag_name="publisher_dn_list"),
    Option("messaging", "path", "path", help="incoming dirq queue (SSM schema: body, signer, empaid); default stdout", flag_name="incoming"),
    Option("messaging", "reject_path", "path", help="reject dirq queue for messages that cannot be stored", flag_name="reject"),
]


def publishers(settings, section: str) -> DnAllowList:
    """Who may publish the stream: a reader must know it; "any certificate the CAs vouch for" is no answer."""
    allowed = DnAllowList.combine(settings[f"{section}.dn"] or (), settings[f"{section}.dn_list"])
    if not allowed.dns:
        raise config.ConfigError(f"[{section}] dn or dn_list is required: the DN(s) of the stream's publisher "
                                 "(--publisher-dn '/O=../CN=..')")
    return allowed


RELAY = [
    Option("relay", "input", "list", required=True, help="upstream endpoint to connect (repeatable)", flag_name="in"),
    Option("relay", "output", "list", required=True, help="downstream endpoint to bind (repeatable)", flag_name="out"),
    Option("relay", "stream", "list", help="stream to subscribe upstream (needed behind multicast; default all)"),
    Option("relay", "multicast_rate", "int", 10_000, "kbit/s a multicast output may send"),
    Option("curve", "in_server_key", "path", flag_name="curve_in_server_key", help="CurveZMQ upstream: the upstream server's public NAME.key"),
    Option("curve", "in_secret_key", "path", flag_name="curve_in_secret_key", help="CurveZMQ upstream: our NAME.key_secret (default: fresh per run)"),
    Option("curve", "out_secret_key", "path", flag_name="curve_out_secret_key", help="CurveZMQ downstream: our NAME.key_secret as a server"),
    Option("curve", "out_clients", "path", flag_name="curve_out_clients", help="CurveZMQ downstream: directory of allowed clients' NAME.key files"),
]


def _credential(settings) -> Credential:
    return Credential.load(settings["certificates.certificate"], settings["certificates.key"])




# -- publish --------------------------------------------------------------------


def cmd_publish(args) -> int:
    settings = config.load(PUBLISH, args)
    try:
        policy = RotationPolicy(
            max_age=settings["rotation.max_age"], max_messages=settings["rotation.max_messages"],
            max_bytes=settings["rotation.max_bytes"], reannounce_interval=settings["rotation.reannounce_interval"],
            checkpoint_interval=settings["rotation.checkpoint_interval"], checkpoint_max=settings["rotation.checkpoint_max"],
            transport=cms.KeyTransport.OAEP if settings["rotation.key_transport"] == "oaep" else cms.KeyTransport.PKCS1V15,
            group_size=settings["rotation.group_size"],
            group_reannounce_interval=settings["rotation.group_reannounce_interval"])
    except ValueError as exc:
        raise config.ConfigError(f"{settings.source}: [rotation] {exc}") from None
    registry = ReaderRegistry(settings["readers.registry"], settings["readers.dn_list"])
    spool = OutgoingSpool(settings["messaging.path"], settings["messaging.spool"]) if settings["messaging.path"] else None
    stop = Stop()
    publisher = Publisher(settings["stream.name"], list(settings["publisher.endpoint"]), _credential(settings), registry,
                          trust_dir=settings["certificates.capath"], crl=CrlPolicy(settings["certificates.crl"]), policy=policy,
                          curve=curve.configured_server(settings["curve.secret_key"], settings["curve.clients"]),
                          multicast_rate=settings["publisher.multicast_rate"])
    log.info("stream %s: publishing on %s to %d reader(s)", settings["stream.name"],
             ", ".join(publisher.endpoints), publisher.stats.readers)
    status_every, next_status = settings["status.status_interval"], 0.0
    idle_since = time.monotonic()
    try:
        while not stop.requested:
            published = 0
            if spool is not None:
                items, sent = spool.take(), []
                try:
                    for name, data in items:
                        publisher.publish(data)
                        sent.append(name)
                        if stop.requested:
                            break
                    # Removed only once the checkpoint vouching for them is out: a crash before this
                    # point publishes them again after the restart rather than losing them.
                    publisher.flush()
                    for name in sent:
                        spool.done(name)
                except NoReaders as exc:  # messages stay in the spool until a reader is authorized
                    sent = []
                    if time.monotonic() >= next_status:
                        log.warning("%s", exc)
                finally:
                    for name, _ in items:
                        if name not in sent:
                            spool.release(name)
                published = len(sent)
            if published:
                idle_since = time.monotonic()
            elif args.exit_when_idle and time.monotonic() - idle_since >= args.exit_when_idle:
                break
            now = time.monotonic()
            if now >= next_status:
                next_status = now + status_every
                status = _publisher_status(settings, publisher)
                write_status(settings["status.status_file"], status)
                log.info("status: epoch %(epoch)d, %(readers)d readers, %(sent)d sent, %(rekeys)d rekeys", status)
            publisher.run_idle(0 if published else settings["messaging.poll_interval"])
    finally:
        publisher.close()
        write_status(settings["status.status_file"], _publisher_status(settings, publisher))
    return 0


def _publisher_status(settings, publisher: Publisher) -> dict:
    s = publisher.stats
    return {"role": "publisher", "stream": settings["stream.name"], "stream_id": publisher.sender.stream_id.hex(),
            "epoch": s.epoch, "readers": s.readers, "sent": s.sent, "bytes": s.bytes, "rekeys": s.rekeys,
            "last_rekey_cause": s.last_rekey_cause, "last_rekey_seconds": round(s.last_rekey_seconds, 4),
            "announcement_bytes": s.announcement_bytes, "last_rekey_bytes": s.last_rekey_bytes, "groups": s.groups,
            "group_rekeys": s.group_rekeys, "checkpoints": s.checkpoints,
            "updated": utc_stamp()}


# -- subscribe ---------------------------------------------------------------------


def _deliver(message: Delivered, spool: IncomingSpool | None) -> bool:
    """Store one message; False if the incoming queue refused it (not UTF-8 text)."""
    if spool is not None:
        if spool.accept(message.payload, message.publisher_dn, message.message_id) is None:
            log.warning("seq %d: payload is not UTF-8 text; %s", message.seq,
                        "in the reject queue" if spool.rejects is not None else "dropped (no reject queue configured)")
            return False
    else:
        sys.stdout.buffer.write(message.payload + b"\n")
        sys.stdout.buffer.flush()
    return True


def _reader_status(settings, counters: Counter, epoch: int) -> dict:
    rejects = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:")}
    return {"role": "subscriber", "stream": settings["stream.name"], "epoch": epoch,
            "received": counters.get("delivered", 0), "gaps": counters.get("gap", 0),
            "restarts": counters.get("restart", 0), "rejected": rejects,
            "announcement_bytes": counters.get("announcement-bytes", 0), "updated": utc_stamp()}


def cmd_subscribe(args) -> int:
    settings = config.load(SUBSCRIBE, args)
    allowed = publishers(settings, "publishers")
    spool = IncomingSpool(settings["messaging.path"], settings["messaging.reject_path"]) if settings["messaging.path"] else None
    stop = Stop()
    subscriber = Subscriber(settings["stream.name"], list(settings["subscriber.endpoint"]), _credential(settings),
                            settings["certificates.capath"], allowed_publishers=allowed,
                            crl=CrlPolicy(settings["certificates.crl"]),
                            curve=curve.configured_client(settings["curve.server_key"], settings["curve.secret_key"]))
    received, next_status = 0, 0.0
    last_message = time.monotonic()
    try:
        while not stop.requested:
            message = subscriber.receive(timeout=0.2)
            now = time.monotonic()
            if message is not None:
                if not _deliver(message, spool):  # durable (fsync'ed) before we count it
                    subscriber.counters["rejected:not-utf8"] += 1
                received += 1
                last_message = now
                if args.count and received >= args.count:
                    break
            elif args.exit_when_idle and now - last_message >= args.exit_when_idle:
                break
            if now >= next_status:
                next_status = now + settings["status.status_interval"]
                status = _reader_status(settings, subscriber.counters, subscriber.events.epoch)
                write_status(settings["status.status_file"], status)
                log.info("status: epoch %(epoch)d, %(received)d received, %(gaps)d lost, rejected %(rejected)s", status)
    finally:
        write_status(settings["status.status_file"], _reader_status(settings, subscriber.counters, subscriber.events.epoch))
        subscriber.close()
    return 0


# -- capture, inspect, decrypt ---------------------------------------------------------


def cmd_capture(args) -> int:
    """Record the raw frames of a stream, keyless; announcements also as .der files."""
    from .transports import check_endpoint

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, args.stream.encode() + b"\x00" if args.stream else b"")
    for endpoint in args.endpoint:
        check_endpoint(endpoint)
        socket.connect(endpoint)
    stop = Stop()
    deadline = time.monotonic() + args.duration if args.duration else None
    count = 0
    with open(out / "frames.zcap", "ab") as capture:
        while not stop.requested and (deadline is None or time.monotonic() < deadline):
            if not socket.poll(100, zmq.POLLIN):
                continue
            parts = socket.recv_multipart()
            capture.write(msgpack.packb([time.time(), parts], use_bin_type=True))
            capture.flush()
            count += 1
            try:
                frame = frames.decode(parts)
            except frames.FrameError:
                continue
            if isinstance(frame, frames.Announcement):
                stem = out / f"announcement-{frame.stream_id.hex()[:12]}-epoch{frame.epoch}"
                if not stem.with_suffix(".der").exists():
                    stem.with_suffix(".der").write_bytes(frame.envelope)
                    stem.with_suffix(".sig.der").write_bytes(frame.signature)
            if args.count and count >= args.count:
                break
    socket.close()
    print(f"captured {count} frames into {out / 'frames.zcap'}")
    return 0


def read_capture(path: Path):
    """Yield (timestamp, parts) from a capture file; a damaged tail ends the file with a warning."""
    from keys.errors import KeyFileError

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open capture ({exc.strerror})") from None
    with fh:
        unpacker = msgpack.Unpacker(fh, raw=False, max_bin_len=frames.MAX_ANNOUNCEMENT_FRAME)
        try:
            for record in unpacker:
                if not (isinstance(record, list) and len(record) == 2 and isinstance(record[1], list)):
                    raise ValueError("record is not [timestamp, parts]")
                yield record[0], [bytes(p) for p in record[1]]
        except (ValueError, msgpack.UnpackException) as exc:
            log.warning("%s: capture damaged after the last good frame (%s)", path, exc)


def cmd_inspect(args) -> int:
    for ts, parts in read_capture(args.file):
        stamp = time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
        try:
            frame = frames.decode(parts)
        except frames.FrameError as exc:
            print(f"{stamp} INVALID [{exc.reason}] {exc}")
            continue
        name = frames.stream_name(frame.topic).decode(errors="replace")
        sid = frame.stream_id.hex()[:12]
        if isinstance(frame, frames.DataFrame):
            print(f"{stamp} D {name} stream {sid} epoch {frame.epoch} seq {frame.seq} ciphertext {len(frame.ciphertext)} B")
        elif isinstance(frame, frames.Checkpoint):
            print(f"{stamp} S {name} stream {sid} seqs {frame.first_seq}..{frame.first_seq + frame.count - 1}")
        else:
            try:
                signer = cms.verify_signature(frame.signature, frame.envelope).signer
                who = f"signed by {slash_dn(signer.subject)} (signature good; certificate not checked)"
            except cms.CmsError as exc:
                who = f"signature INVALID ({exc})"
            try:
                recipients = cms.recipients(frame.envelope)
                wrapped = (f"recipients {recipients.key_transport}" if not recipients.kek_ids else
                           f"group keys {', '.join(k.decode(errors='replace') for k in recipients.kek_ids)}")
            except cms.CmsError as exc:
                wrapped = f"envelope INVALID ({exc})"
            if isinstance(frame, frames.GroupAnnouncement):
                print(f"{stamp} G {name} stream {sid} group {frame.tag.decode()!r} generation {frame.generation} "
                      f"{wrapped} envelope {len(frame.envelope)} B, {who}")
            else:
                print(f"{stamp} K {name} stream {sid} epoch {frame.epoch} {wrapped} envelope {len(frame.envelope)} B, {who}")
    return 0


def cmd_decrypt(args) -> int:
    """Read a capture as an authorized reader would have, with the same checks."""
    from keys.trust import TrustStore

    allowed = DnAllowList.combine(args.publisher_dn or (), args.publisher_dn_list)
    if not allowed.dns:
        raise config.ConfigError("--publisher-dn or --publisher-dn-list is required: the DN(s) of the stream's publisher")
    receiver = StreamReceiver(Credential.load(args.certificate, args.key), TrustStore.from_directory(args.capath),
                              allowed_publishers=allowed,
                              crl=CrlPolicy(args.crl))
    spool = IncomingSpool(args.incoming) if args.incoming else None
    first = None
    for ts, parts in read_capture(args.file):
        first = ts if first is None else first
        for event in receiver.frame_received(parts, ts - first):
            if isinstance(event, Delivered):
                _deliver(event, spool)
            elif isinstance(event, Rejected):
                log.warning("seq %s: rejected [%s] %s", event.seq, event.reason, event.detail)
    for event in receiver.tick(float("inf")):
        if isinstance(event, Rejected):
            log.warning("seq %s: rejected [%s] %s", event.seq, event.reason, event.detail)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(receiver.counters.items()))
    print(f"decrypt: {summary or 'nothing'}", file=sys.stderr)
    return 0


def cmd_relay(args) -> int:
    from .relay import Relay

    settings = config.load(RELAY, args)
    inputs, outputs = list(settings["relay.input"]), list(settings["relay.output"])
    stop = Stop()
    relay = Relay(inputs, outputs, streams=list(settings["relay.stream"] or []),
                  curve_in=curve.configured_client(settings["curve.in_server_key"], settings["curve.in_secret_key"]),
                  curve_out=curve.configured_server(settings["curve.out_secret_key"], settings["curve.out_clients"]),
                  multicast_rate=settings["relay.multicast_rate"]).start()
    log.info("relay: %s -> %s", ", ".join(inputs), ", ".join(outputs))
    try:
        while not stop.requested:
            time.sleep(0.2)
    finally:
        relay.stop()
    return 0


def cmd_curve_keygen(args) -> int:
    public, secret = curve.generate(args.dir, args.name)
    print(f"public key {public} (give it to peers), secret key {secret} (mode 0600, keep it here)")
    return 0


def cmd_status(args) -> int:
    from keys.errors import KeyFileError

    try:
        status = json.loads(args.file.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{args.file}: no readable status ({exc.__class__.__name__})") from None
    for key in sorted(status):
        print(f"{key:>20}: {status[key]}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("publish", help="publish a spool as an encrypted stream")
    config.add_flags(p, PUBLISH)
    p.add_argument("--exit-when-idle", type=float, default=0, metavar="SECONDS",
                   help="exit after the spool has been empty this long (batch runs)")
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser("subscribe", help="read an encrypted stream into an incoming spool (or stdout)")
    config.add_flags(p, SUBSCRIBE)
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--exit-when-idle", type=float, default=0, metavar="SECONDS", help="exit after this long without a message")
    p.set_defaults(func=cmd_subscribe)

    p = subparsers.add_parser("relay", help="forward streams unchanged (no key), e.g. into a subtree or multicast")
    config.add_flags(p, RELAY)
    p.set_defaults(func=cmd_relay)

    p = subparsers.add_parser("curve-keygen", help="make a CurveZMQ key pair: NAME.key (public) and NAME.key_secret (0600)")
    p.add_argument("name")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write the two files")
    p.set_defaults(func=cmd_curve_keygen)

    p = subparsers.add_parser("capture", help="record a stream's raw frames without any key")
    p.add_argument("endpoint", nargs="+")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stream", help="only this stream (default: every topic)")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--duration", type=float, default=0)
    p.set_defaults(func=cmd_capture)

    p = subparsers.add_parser("inspect", help="print the frames of a capture")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("decrypt", help="read a capture as an authorized reader")
    p.add_argument("file", type=Path)
    p.add_argument("--certificate", required=True, type=Path)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--capath", required=True, type=Path)
    p.add_argument("--crl", choices=[c.value for c in CrlPolicy], default="require")
    p.add_argument("--publisher-dn", action="append", help="DN of the stream's publisher (repeatable)")
    p.add_argument("--publisher-dn-list", type=Path)
    p.add_argument("--incoming", type=Path, help="incoming dirq queue instead of stdout")
    p.set_defaults(func=cmd_decrypt)

    p = subparsers.add_parser("status", help="show a publisher's or subscriber's status file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_status)
