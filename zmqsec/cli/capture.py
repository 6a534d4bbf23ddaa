"""``zmqsec capture|inspect|decrypt|status``: look at a stream and at a daemon from outside."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from zmqsec.crypto import cms, enveloped
from zmqsec.drivers.capture import read_capture, record
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.drivers.spooling import store
from zmqsec.drivers.status import Stop
from zmqsec.errors import ConfigError
from zmqsec.keys.dn import DnAllowList, slash_dn
from zmqsec.keys.errors import KeyFileError
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import CrlPolicy, TrustStore
from zmqsec.machines.receiver import Delivered, Rejected, StreamReceiver
from zmqsec.protocol import frames
from zmqsec.protocol.announce import check_signature

log = logging.getLogger("zmqsec")


def cmd_capture(args) -> int:
    """Record the raw frames of a stream, keyless; announcements also as .der files."""
    count = record(args.endpoint, args.out, stream=args.stream, count=args.count, duration=args.duration, stop=Stop())
    print(f"captured {count} frames into {args.out / 'frames.zcap'}")
    return 0


def cmd_inspect(args) -> int:
    """Print every frame of a capture, checking signatures but no certificate."""
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
        elif isinstance(frame, frames.RunFrame):
            follows = (f"follows run {frame.previous_stream_id.hex()[:12]} (its last seq {frame.previous_last_seq})"
                       if frame.previous_stream_id else "a first run")
            print(f"{stamp} R {name} stream {sid} {follows}")
        else:
            try:
                signer = check_signature(frame).signer  # its header too (docs/PROTOCOL.md §4.3)
                who = f"signed by {slash_dn(signer.subject)} (signature good; certificate not checked)"
            except cms.CmsError as exc:
                who = f"signature INVALID ({exc})"
            try:
                recipients = enveloped.recipients(frame.envelope)
                wrapped = (f"recipients {recipients.key_transport}" if not recipients.kek_ids else
                           f"key ids {', '.join(k.decode(errors='replace') for k in recipients.kek_ids)}")
            except cms.CmsError as exc:
                wrapped = f"envelope INVALID ({exc})"
            if isinstance(frame, frames.GroupAnnouncement):
                print(f"{stamp} G {name} stream {sid} group {frame.tag.decode()!r} generation {frame.generation} "
                      f"{wrapped} envelope {len(frame.envelope)} B, {who}")
            elif isinstance(frame, frames.TreeAnnouncement):
                print(f"{stamp} T {name} stream {sid} tree node {frame.tag.decode()!r} generation {frame.generation} "
                      f"{wrapped} envelope {len(frame.envelope)} B, {who}")
            else:
                print(f"{stamp} K {name} stream {sid} epoch {frame.epoch} {wrapped} envelope {len(frame.envelope)} B, {who}")
    return 0


def cmd_decrypt(args) -> int:
    """Read a capture as an authorized reader would have, with the same checks."""
    allowed = DnAllowList.combine(args.publisher_dn or (), args.publisher_dn_list)
    if not allowed.dns:
        raise ConfigError("--publisher-dn or --publisher-dn-list is required: the DN(s) of the stream's publisher")
    receiver = StreamReceiver(Credential.load(args.certificate, args.key), TrustStore.from_directory(args.capath),
                              allowed_publishers=allowed,
                              crl=CrlPolicy(args.crl))
    spool = IncomingSpool(args.incoming) if args.incoming else None
    first = None
    for ts, parts in read_capture(args.file):
        first = ts if first is None else first
        for event in receiver.frame_received(parts, ts - first):
            if isinstance(event, Delivered):
                store(event, spool)
            elif isinstance(event, Rejected):
                log.warning("seq %s: rejected [%s] %s", event.seq, event.name, event.detail)
    for event in receiver.tick(float("inf")):
        if isinstance(event, Rejected):
            log.warning("seq %s: rejected [%s] %s", event.seq, event.name, event.detail)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(receiver.counters.items()))
    print(f"decrypt: {summary or 'nothing'}", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    """Print a daemon's status file."""
    try:
        status = json.loads(args.file.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{args.file}: no readable status ({exc.__class__.__name__})") from None
    for key in sorted(status):
        print(f"{key:>20}: {status[key]}")
    return 0


def register(subparsers) -> None:
    """Add ``zmqsec capture``, ``inspect``, ``decrypt`` and ``status``."""
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
