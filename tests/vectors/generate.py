"""Regenerate tests/vectors/frames.json (docs/PROTOCOL.md §7).

    .venv/bin/python tests/vectors/generate.py

Data frames, key records and checkpoints are deterministic (fixed keys and
inputs; RSA PKCS#1 v1.5 signatures are deterministic).  The announcement
vectors embed one CMS envelope as generated, with the reader's test key, since
CMS key transport is randomized.  All keys here are test keys, published on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives import serialization

from zmqsec.keys.ca import CertificateAuthority, Role
from zmqsec.keys.dn import parse_slash_dn
from zmqsec.keys.pemfiles import Credential
from zmqsec.protocol import frames
from zmqsec.protocol.datacipher import DataKey
from zmqsec.protocol.announce import GroupKey, make_announcement, make_group_announcement
from zmqsec.protocol.checkpoint import sign_checkpoint
from zmqsec.protocol.groups import reader_bits
from zmqsec.crypto import signed
from zmqsec.crypto.enveloped import Kek, certificate_recipients
from zmqsec.protocol.primitives import (
    associated_data,
    encode_group_record,
    encode_key_record,
    frame_digest,
    header_digest,
    nonce,
)

OUT = Path(__file__).with_name("frames.json")
KEY = bytes(range(32))
KEK = bytes(range(32, 64))
STREAM_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
TOPIC = b"apel.jobs\x00D"


def _hex(parts):
    return [p.hex() for p in parts]


def _pem_key(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def data_frame(epoch: int, seq: int, payload: bytes) -> list[bytes]:
    ct = DataKey(KEY).seal(TOPIC, STREAM_ID, epoch, seq, payload)
    return frames.encode(frames.DataFrame(TOPIC, STREAM_ID, epoch, seq, ct))


def version_1(announcement, credential: Credential, clock):
    """The announcement as protocol version 1 made it: the same envelope, signed without its header."""
    return dataclasses.replace(announcement, signature=signed.sign(announcement.envelope, credential, clock=clock),
                               version=1)


def main(workdir: Path) -> None:
    vectors = []
    good = data_frame(3, 41, b"JobName: 42\nWallDuration: 3600\n")
    vectors.append({"name": "data-ok", "kind": "data", "expect": "success", "key": KEY.hex(),
                    "parts": _hex(good), "payload": b"JobName: 42\nWallDuration: 3600\n".hex(),
                    "nonce": nonce(3, 41).hex(), "aad": associated_data(TOPIC, STREAM_ID, 3, 41).hex(),
                    "digest": frame_digest(TOPIC, good[1]).hex()})
    flipped = bytearray(good[1])
    flipped[-3] ^= 0x01
    vectors.append({"name": "data-payload-flipped", "kind": "data", "expect": "decrypt-failed", "key": KEY.hex(),
                    "parts": _hex([good[0], bytes(flipped)])})
    fields = msgpack.unpackb(good[1])
    fields[3] = 42  # claim another sequence number: the associated data no longer matches
    vectors.append({"name": "data-seq-changed", "kind": "data", "expect": "decrypt-failed", "key": KEY.hex(),
                    "parts": _hex([good[0], msgpack.packb(fields)])})
    other_topic = [b"apel.other\x00D", good[1]]
    vectors.append({"name": "data-topic-changed", "kind": "data", "expect": "decrypt-failed", "key": KEY.hex(),
                    "parts": _hex(other_topic)})
    fields = msgpack.unpackb(good[1])
    fields[0] = 2
    vectors.append({"name": "frame-unknown-version", "kind": "frame", "expect": "unknown-version",
                    "parts": _hex([good[0], msgpack.packb(fields)])})
    vectors.append({"name": "frame-truncated", "kind": "frame", "expect": "bad-msgpack", "parts": _hex([good[0], good[1][:-5]])})
    vectors.append({"name": "frame-bad-topic", "kind": "frame", "expect": "bad-topic", "parts": _hex([b"apel.jobs", good[1]])})
    vectors.append({"name": "frame-bad-group-tag", "kind": "frame", "expect": "bad-topic",
                    "parts": _hex([b"apel.jobs\x00G012.", good[1]])})

    record = encode_key_record(b"apel.jobs", STREAM_ID, 3, KEY)
    vectors.append({"name": "key-record-ok", "kind": "key-record", "expect": "success", "record": record.hex(),
                    "topic": b"apel.jobs".hex(), "stream_id": STREAM_ID.hex(), "epoch": 3, "key": KEY.hex()})
    bad = bytearray(record)
    bad[-1] ^= 0x80
    vectors.append({"name": "key-record-bad-check", "kind": "key-record", "expect": "key-confirmation", "record": bytes(bad).hex()})
    record = encode_group_record(b"apel.jobs", STREAM_ID, b"01", 7, KEK)
    vectors.append({"name": "group-key-record-ok", "kind": "group-key-record", "expect": "success", "record": record.hex(),
                    "stream_name": b"apel.jobs".hex(), "stream_id": STREAM_ID.hex(), "tag": "01", "generation": 7, "kek": KEK.hex()})
    bad = bytearray(record)
    bad[-1] ^= 0x80
    vectors.append({"name": "group-key-record-bad-check", "kind": "group-key-record", "expect": "key-confirmation",
                    "record": bytes(bad).hex()})

    fixed = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ca = CertificateAuthority.init(workdir / "ca", subject=parse_slash_dn("/O=zmqsec vectors/CN=Vector CA"),
                                   rsa_bits=2048, clock=lambda: fixed)
    later = dt.datetime(2046, 1, 1, tzinfo=dt.timezone.utc)
    pub = ca.issue(role=Role.PUBLISHER, cn="publisher.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    reader = ca.issue(role=Role.READER, cn="reader.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    other = ca.issue(role=Role.READER, cn="other.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    pub_cred = Credential.load(pub.cert_path, pub.key_path)
    digests = frame_digest(TOPIC, good[1]) + bytes(32)
    checkpoint = frames.encode(sign_checkpoint(b"apel.jobs", STREAM_ID, 41, digests, pub_cred.key))
    common = {"publisher_cert": _pem_cert(pub.certificate)}
    vectors.append({"name": "checkpoint-ok", "kind": "checkpoint", "expect": "success", "parts": _hex(checkpoint), **common})
    tampered = msgpack.unpackb(checkpoint[1])
    tampered[3] = bytes(32) + tampered[3][32:]
    vectors.append({"name": "checkpoint-digest-changed", "kind": "checkpoint", "expect": "bad-checkpoint",
                    "parts": _hex([checkpoint[0], msgpack.packb(tampered)]), **common})

    made = make_announcement(b"apel.jobs", STREAM_ID, 3, KEY, certificate_recipients([reader.certificate]),
                             pub_cred, clock=lambda: fixed)
    announcement = frames.encode(made)
    ann = {"kind": "announcement", "parts": _hex(announcement), "ca_cert": _pem_cert(ca.certificate),
           "crl": ca.current_crl().public_bytes(serialization.Encoding.PEM).decode(), "at": "2026-01-15T00:00:00+00:00"}
    ours = {"reader_cert": _pem_cert(reader.certificate), "reader_key": _pem_key(reader.key)}
    vectors.append({"name": "announcement-ok", "expect": "success", **ours, "key": KEY.hex(), "epoch": 3,
                    "header_digest": header_digest(made.topic, STREAM_ID, 3).hex(), **ann})
    vectors.append({"name": "announcement-not-for-us", "expect": "not-a-recipient", "reader_cert": _pem_cert(other.certificate),
                    "reader_key": _pem_key(other.key), **ann})
    # Version 2 signs the header: the same envelope and signature under another epoch, as version 2 or as
    # version 1, is refused before any signature math.  The reader is not a recipient: only the signed header
    # can tell (the key record, which repeats the header, stays closed to it).
    theirs = {"reader_cert": _pem_cert(other.certificate), "reader_key": _pem_key(other.key)}
    for name, version in (("announcement-reheaded", 2), ("announcement-reheaded-as-version-1", 1)):
        moved = frames.encode(dataclasses.replace(made, epoch=4, version=version))
        vectors.append({"name": name, "expect": "header-mismatch", **theirs, **ann, "parts": _hex(moved)})
    vectors.append({"name": "announcement-version-1-ok", "expect": "success", **ours, "key": KEY.hex(), "epoch": 3,
                    **ann, "parts": _hex(frames.encode(version_1(made, pub_cred, lambda: fixed)))})
    fields = msgpack.unpackb(announcement[1])
    fields[0] = 3
    vectors.append({"name": "announcement-unknown-version", "kind": "frame", "expect": "unknown-version",
                    "parts": _hex([announcement[0], msgpack.packb(fields)])})
    # Reader groups (§4.5): the reader's group key in its own envelope, the epoch key wrapped under it.
    tag = reader_bits(reader.certificate)[:2]
    group = GroupKey(tag, 7, KEK)
    group_parts = frames.encode(make_group_announcement(b"apel.jobs", STREAM_ID, group, certificate_recipients([reader.certificate]), pub_cred,
                                                        clock=lambda: fixed))
    grouped = frames.encode(make_announcement(b"apel.jobs", STREAM_ID, 3, KEY, [Kek(group.key_id, group.key)], pub_cred,
                                              clock=lambda: fixed))
    vectors.append({"name": "grouped-announcement-ok", "expect": "success", "reader_cert": _pem_cert(reader.certificate),
                    "reader_key": _pem_key(reader.key), "key": KEY.hex(), "epoch": 3, "group_parts": _hex(group_parts),
                    "kek_id": group.key_id.hex(), "kek": KEK.hex(), **ann, "kind": "grouped-announcement",
                    "parts": _hex(grouped)})
    vectors.append({"name": "grouped-announcement-without-group-key", "expect": "no-group-key",
                    "reader_cert": _pem_cert(other.certificate), "reader_key": _pem_key(other.key), **ann,
                    "kind": "grouped-announcement", "parts": _hex(grouped)})
    OUT.write_text(json.dumps({"protocol": "zmqsec v2", "see": "docs/PROTOCOL.md", "vectors": vectors}, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
