"""Regenerate tests/vectors/replay.json: run frames (docs/PROTOCOL.md §10.2) and replay messages (§10.4).

    .venv/bin/python tests/vectors/generate_replay.py

Replay messages are deterministic (msgpack of fixed fields): :func:`message_vectors` rebuilds them, and
the tests check that the file still holds exactly what it builds.  The run frames are signed by a
publisher test key made here (RSA PKCS#1 v1.5 signatures are deterministic, so the tests re-sign with the
published key and must get the same bytes); the key, like every key here, is a test key, published on purpose.
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
from zmqsec.protocol import replay as codec
from zmqsec.protocol.checkpoint import sign_run
from zmqsec.protocol.primitives import run_signing_input

OUT = Path(__file__).with_name("replay.json")
STREAM = b"apel.jobs"
STREAM_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
PREVIOUS = bytes.fromhex("ffeeddccbbaa99887766554433221100")
TAGS = b"0110100111000101"
BITS = (TAGS * 16)[:256]  # a reader's key tree bits, in a roots request


def _hex(parts):
    """Message parts as hex strings."""
    return [p.hex() for p in parts]


def _pem_key(key) -> str:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert) -> str:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pack(*fields) -> bytes:
    """A client message as a hostile or buggy client would write it: any msgpack array."""
    return msgpack.packb(list(fields), use_bin_type=True)


def _described(message) -> dict:
    """A message's fields for the vector file, bytes in hex, with ``type`` naming the message."""
    out = {"type": type(message).__name__.lower()}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        out[f.name] = value.hex() if isinstance(value, bytes) else value
    return out


def message_vectors() -> list[dict]:
    """Every replay message vector: encodings that must be exact, and client messages that must be refused
    (``bad-request``), each with the bytes a server receives."""
    good = [
        ("request-ok", codec.Request(7, STREAM, STREAM_ID, 1, 0, b"", 512)),
        ("request-range-with-tags", codec.Request(2**32 - 1, STREAM, STREAM_ID, 41, 2**64 - 1, TAGS, codec.MAX_CREDIT)),
        ("request-one-frame", codec.Request(0, b"s", STREAM_ID, 5, 5, b"0", 0)),
        ("credit-ok", codec.Credit(7, 256)),
        ("cancel-ok", codec.Cancel(7)),
        ("roots-ok", codec.Roots(8, STREAM, STREAM_ID, BITS, 3)),
    ]
    vectors = [{"name": name, "kind": "replay-client", "expect": "success", "bytes": codec.encode(m).hex(),
                "message": _described(m)} for name, m in good]
    servers = [
        ("end-ok", codec.End(7, 90, 1, 200)),
        ("end-nothing-held", codec.End(3, 0, 0, 0)),
        ("error-unknown-run", codec.Error(7, codec.UNKNOWN_RUN, "run 00112233445566778899aabbccddeeff is not in this journal")),
        ("error-busy", codec.Error(9, codec.BUSY, "")),
        ("error-no-keys", codec.Error(8, codec.NO_KEYS, "this server keeps no keys (an archive)")),
        ("error-not-a-reader", codec.Error(8, codec.NOT_A_READER, "")),
    ]
    vectors += [{"name": name, "kind": "replay-server", "expect": "success", "bytes": codec.encode(m).hex(),
                 "message": _described(m)} for name, m in servers]
    vectors.append({"name": "frame-header-ok", "kind": "replay-frame-header", "expect": "success",
                    "bytes": codec.frame_header(7).hex(), "message": {"type": "frame", "id": 7}})
    request = ["request", 7, STREAM, STREAM_ID, 1, 0, b"", 512]
    refused = [
        ("refuse-empty", b""),
        ("refuse-not-msgpack", b"\xc1"),
        ("refuse-not-an-array", msgpack.packb({"a": 1})),
        ("refuse-version-2", _pack(2, *request)),
        ("refuse-version-as-text", _pack("1", *request)),
        ("refuse-request-arity-8", _pack(1, *request[:-1])),
        ("refuse-request-arity-10", _pack(1, *request, 0)),
        ("refuse-credit-arity", _pack(1, "credit", 7)),
        ("refuse-cancel-arity", _pack(1, "cancel", 7, 1)),
        ("refuse-unknown-kind", _pack(1, "fetch", 7, STREAM, STREAM_ID, 1, 0, b"", 512)),
        ("refuse-server-kind-from-client", codec.encode(codec.End(7, 1, 1, 1))),
        ("refuse-id-text", _pack(1, "request", "7", STREAM, STREAM_ID, 1, 0, b"", 512)),
        ("refuse-id-negative", _pack(1, "cancel", -1)),
        ("refuse-id-too-big", _pack(1, "cancel", 2**32)),
        ("refuse-stream-text", _pack(1, "request", 7, "apel.jobs", STREAM_ID, 1, 0, b"", 512)),
        ("refuse-stream-empty", _pack(1, "request", 7, b"", STREAM_ID, 1, 0, b"", 512)),
        ("refuse-stream-nul", _pack(1, "request", 7, b"apel\0jobs", STREAM_ID, 1, 0, b"", 512)),
        ("refuse-stream-201-bytes", _pack(1, "request", 7, b"s" * 201, STREAM_ID, 1, 0, b"", 512)),
        ("refuse-run-15-bytes", _pack(1, "request", 7, STREAM, STREAM_ID[:15], 1, 0, b"", 512)),
        ("refuse-run-17-bytes", _pack(1, "request", 7, STREAM, STREAM_ID + b"\0", 1, 0, b"", 512)),
        ("refuse-run-text", _pack(1, "request", 7, STREAM, "0" * 16, 1, 0, b"", 512)),
        ("refuse-first-0", _pack(1, "request", 7, STREAM, STREAM_ID, 0, 0, b"", 512)),
        ("refuse-last-below-first", _pack(1, "request", 7, STREAM, STREAM_ID, 10, 9, b"", 512)),
        ("refuse-first-bool", _pack(1, "request", 7, STREAM, STREAM_ID, True, 0, b"", 512)),
        ("refuse-first-float", _pack(1, "request", 7, STREAM, STREAM_ID, 1.0, 0, b"", 512)),
        ("refuse-tags-not-bits", _pack(1, "request", 7, STREAM, STREAM_ID, 1, 0, b"012", 512)),
        ("refuse-tags-17-bits", _pack(1, "request", 7, STREAM, STREAM_ID, 1, 0, b"0" * 17, 512)),
        ("refuse-tags-text", _pack(1, "request", 7, STREAM, STREAM_ID, 1, 0, "01", 512)),
        ("refuse-roots-255-bits", _pack(1, "roots", 8, STREAM, STREAM_ID, BITS[:255], 3)),
        ("refuse-roots-bits-not-bits", _pack(1, "roots", 8, STREAM, STREAM_ID, BITS[:255] + b"2", 3)),
        ("refuse-roots-generation-negative", _pack(1, "roots", 8, STREAM, STREAM_ID, BITS, -1)),
        ("refuse-roots-arity", _pack(1, "roots", 8, STREAM, STREAM_ID, BITS)),
        ("refuse-roots-run-15-bytes", _pack(1, "roots", 8, STREAM, STREAM_ID[:15], BITS, 3)),
        ("refuse-credit-negative", _pack(1, "credit", 7, -1)),
        ("refuse-credit-too-big", _pack(1, "credit", 7, codec.MAX_CREDIT + 1)),
        ("refuse-over-1-kib", _pack(1, "request", 7, STREAM, STREAM_ID, 1, 0, b"", 512, b"x" * 1000)),
    ]
    for name, data in refused:
        vectors.append({"name": name, "kind": "replay-client", "expect": "bad-request", "bytes": data.hex()})
    return vectors


def run_vectors(workdir: Path) -> list[dict]:
    """Run frames signed by a fresh publisher test key: good ones, tampered ones (``bad-run``), a malformed
    one (``bad-field``); each with the publisher's certificate and key, and the bytes that were signed."""
    fixed = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    later = dt.datetime(2046, 1, 1, tzinfo=dt.timezone.utc)
    ca = CertificateAuthority.init(workdir / "ca", subject=parse_slash_dn("/O=zmqsec vectors/CN=Vector CA"),
                                   rsa_bits=2048, clock=lambda: fixed)
    pub = ca.issue(role=Role.PUBLISHER, cn="publisher.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    other = ca.issue(role=Role.PUBLISHER, cn="impostor.vectors", out_dir=workdir, not_before=fixed, not_after=later)
    key = Credential.load(pub.cert_path, pub.key_path).key
    common = {"kind": "run-frame", "publisher_cert": _pem_cert(pub.certificate), "publisher_key": _pem_key(key)}
    vectors = []
    for name, previous, last in (("run-frame-ok", PREVIOUS, 1234), ("run-frame-first-run-ok", b"", 0)):
        frame = sign_run(STREAM, STREAM_ID, previous, last, key)
        vectors.append({"name": name, "expect": "success", "parts": _hex(frames.encode(frame)),
                        "stream": STREAM.hex(), "stream_id": STREAM_ID.hex(), "previous_stream_id": previous.hex(),
                        "previous_last_seq": last,
                        "signing_input": run_signing_input(frame.topic, STREAM_ID, previous, last).hex(), **common})
    good = frames.encode(sign_run(STREAM, STREAM_ID, PREVIOUS, 1234, key))
    fields = msgpack.unpackb(good[1])
    fields[3] = 1235  # claim the previous run sent one more frame: the signature no longer covers it
    vectors.append({"name": "run-frame-previous-last-changed", "expect": "bad-run",
                    "parts": _hex([good[0], msgpack.packb(fields)]), **common})
    fields = msgpack.unpackb(good[1])
    fields[2] = STREAM_ID  # claim another previous run
    vectors.append({"name": "run-frame-previous-changed", "expect": "bad-run",
                    "parts": _hex([good[0], msgpack.packb(fields)]), **common})
    vectors.append({"name": "run-frame-other-stream", "expect": "bad-run", "parts": _hex([b"apel.other\x00R", good[1]]),
                    **common})
    forged = frames.encode(sign_run(STREAM, STREAM_ID, PREVIOUS, 1234, other.key))
    vectors.append({"name": "run-frame-signed-by-another-publisher", "expect": "bad-run", "parts": _hex(forged),
                    **common})
    fields = msgpack.unpackb(good[1])
    fields[2] = PREVIOUS[:8]
    vectors.append({"name": "run-frame-previous-8-bytes", "expect": "bad-field",
                    "parts": _hex([good[0], msgpack.packb(fields)]), **common})
    return vectors


def main(workdir: Path) -> None:
    """Write :data:`OUT`."""
    vectors = run_vectors(workdir) + message_vectors()
    OUT.write_text(json.dumps({"protocol": "zmqsec v1 replay", "see": "docs/PROTOCOL.md §10.2, §10.4",
                               "vectors": vectors}, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
