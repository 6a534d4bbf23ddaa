"""Regenerate tests/vectors/tree.json: key tree mode (docs/PROTOCOL.md §4.6).

    .venv/bin/python tests/vectors/generate_tree.py

Tree key records, the key derivation, the key identifiers and T topics are
deterministic.  The chain vector embeds the envelopes one reader needs across a
revocation, as generated (CMS key transport is randomized): its path envelope
(for its certificate), the update it receives, and the next epoch's
announcement (under the new root); and the revoked reader, with its own path
envelope, failing to open that announcement.  All keys here are test keys, published on
purpose.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from zmqsec.keys.ca import CertificateAuthority, Role
from zmqsec.keys.dn import parse_slash_dn
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.sender import RotationPolicy, StreamSender, wire
from zmqsec.protocol.groups import leaf_topic, reader_topics
from zmqsec.protocol.primitives import encode_tree_record, tree_derive, tree_kek_id

from generate import _hex, _pem_cert, _pem_key  # tests/vectors/generate.py: the same encodings as frames.json

OUT = Path(__file__).with_name("tree.json")
STREAM_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
KEYS = [bytes(range(i, i + 32)) for i in (0, 32, 64)]


class _CounterRng:
    """Deterministic "random" keys: 1, 2, 3, ... big-endian; remembers the last one (the epoch key of a rekey)."""

    def __init__(self) -> None:
        self.count, self.last = 0, b""

    def __call__(self, n: int) -> bytes:
        self.count += 1
        self.last = self.count.to_bytes(n, "big")
        return self.last


def main(workdir: Path) -> None:
    vectors = []
    keys = [(b"0110", 5, KEYS[0]), (b"01", 5, KEYS[1]), (b"", 4, KEYS[2])]
    derived = [(b"0", 5), (b"", 5)]
    record = encode_tree_record(b"apel.jobs", STREAM_ID, b"01101", 5, keys, derived)
    vectors.append({"name": "tree-key-record-ok", "kind": "tree-key-record", "expect": "success", "record": record.hex(),
                    "stream_name": b"apel.jobs".hex(), "stream_id": STREAM_ID.hex(), "tag": "01101", "generation": 5,
                    "keys": [[t.decode(), g, k.hex()] for t, g, k in keys],
                    "derived": [[t.decode(), g] for t, g in derived], "derived_lengths": [len(t) for t, _ in derived]})
    bad = bytearray(record)
    bad[-1] ^= 0x80
    vectors.append({"name": "tree-key-record-bad-check", "kind": "tree-key-record", "expect": "key-confirmation",
                    "record": bytes(bad).hex()})
    vectors.append({"name": "tree-derive", "kind": "tree-derive", "expect": "success", "key": KEYS[0].hex(),
                    "stream_name": b"apel.jobs".hex(), "stream_id": STREAM_ID.hex(), "tag": "011", "generation": 5,
                    "derived": tree_derive(KEYS[0], b"apel.jobs", STREAM_ID, b"011", 5).hex(),
                    "kek_id": tree_kek_id(b"011", 5).hex()})
    body = "9501c410" + STREAM_ID.hex() + "01c400c400"  # [1, stream_id, 1, b"", b""]
    for name, topic, expect in (("frame-tree-topic-ok", b"apel.jobs\x00T0110.", "success"),
                                ("frame-tree-topic-33-bits", b"apel.jobs\x00T" + b"0" * 33 + b".", "bad-topic"),
                                ("frame-tree-topic-no-dot", b"apel.jobs\x00T0110", "bad-topic")):
        vectors.append({"name": name, "kind": "frame", "expect": expect, "parts": [topic.hex(), body]})

    fixed = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ca = CertificateAuthority.init(workdir / "ca", subject=parse_slash_dn("/O=zmqsec vectors/CN=Vector CA"),
                                   rsa_bits=2048, clock=lambda: fixed)
    later = dt.datetime(2046, 1, 1, tzinfo=dt.timezone.utc)
    pub = ca.issue(role=Role.PUBLISHER, cn="publisher.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    readers = [ca.issue(role=Role.READER, cn=f"reader{i}.vectors", out_dir=workdir, not_before=fixed, not_after=later)
               for i in range(4)]
    reader, victim = readers[0], readers[3]
    sender = StreamSender("apel.jobs", Credential.load(pub.cert_path, pub.key_path),
                          ReaderSet(tuple(Reader(r.certificate) for r in readers)), RotationPolicy(mode="tree"),
                          rng=(rng := _CounterRng()), stream_id=STREAM_ID, wall_clock=lambda: fixed)
    sender.start(0.0)
    path, victim_path = wire(sender.subscription_seen(0.1, [leaf_topic("apel.jobs", r.certificate)
                                                            for r in (reader, victim)]))
    rekey = wire(sender.readers_changed(ReaderSet(tuple(Reader(r.certificate) for r in readers if r is not victim)), 1.0))
    topics = tuple(reader_topics("apel.jobs", reader.certificate))
    [update] = [m for m in rekey if m[0].startswith(topics) and b"\x00T" in m[0]]
    [epoch] = [m for m in rekey if m[0].endswith(b"\x00K")]
    vectors.append({"name": "tree-chain-ok", "kind": "tree-chain", "expect": "success",
                    "reader_cert": _pem_cert(reader.certificate), "reader_key": _pem_key(reader.key),
                    "ca_cert": _pem_cert(ca.certificate),
                    "crl": ca.current_crl().public_bytes(serialization.Encoding.PEM).decode(),
                    "at": "2026-01-15T00:00:00+00:00", "path_parts": _hex(path), "update_parts": _hex(update),
                    "parts": _hex(epoch), "epoch": 2, "key": rng.last.hex()})
    vectors.append({"name": "tree-chain-revoked-reader", "kind": "tree-chain", "expect": "no-group-key",
                    "reader_cert": _pem_cert(victim.certificate), "reader_key": _pem_key(victim.key),
                    "path_parts": _hex(victim_path), **{k: vectors[-1][k] for k in ("ca_cert", "crl", "at", "parts")}})
    OUT.write_text(json.dumps({"protocol": "zmqsec v2, key tree (§4.6)", "see": "docs/PROTOCOL.md",
                               "vectors": vectors}, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
