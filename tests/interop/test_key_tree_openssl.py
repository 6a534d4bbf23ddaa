"""Every envelope of key tree mode (docs/PROTOCOL.md §4.6) opened and verified by the openssl CLI: a reader's path
envelope with its certificate (-recip), then, after a revocation, the update with a key of that path and the new
epoch key with the root derived from it (-secretkey / -secretkeyid)."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from kit.pki import Pki
from kit.wire import WireSender
from zmqsec.crypto import enveloped
from zmqsec.keys.ca import Role
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol import frames
from zmqsec.protocol.groups import leaf_topic, reader_topics
from zmqsec.protocol.primitives import decode_key_record, decode_tree_record, tree_derive, tree_kek_id

STREAM = "apel.jobs"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A publisher and 12 readers."""
    pki = Pki.create(tmp_path_factory.mktemp("tree-openssl"), "/O=zmqsec test/CN=Tree CA", publisher=Role.PUBLISHER)
    pki.issue_shared("reader", 12, digits=2)
    return pki


def _openssl(*args) -> bytes:
    return subprocess.run(["openssl", "cms", *map(str, args)], check=True, capture_output=True).stdout


def _verified_envelope(frame, pki, tmp_path, name: str):
    """Check the frame's signature with openssl; the envelope's file."""
    envelope, signature = tmp_path / f"{name}.der", tmp_path / f"{name}.sig"
    envelope.write_bytes(frame.envelope)
    signature.write_bytes(frame.signature)
    _openssl("-verify", "-inform", "DER", "-in", signature, "-binary", "-content", envelope, "-CApath", pki.trust_dir,
             "-purpose", "smimesign", "-out", "/dev/null")
    return envelope


def test_path_update_and_epoch_envelopes_open_with_openssl(pki, tmp_path):
    readers = [pki[f"reader{i:02d}"] for i in range(12)]
    reader, victim = readers[4], readers[9]
    sender = WireSender(STREAM, pki["publisher"], ReaderSet(tuple(Reader(c.certificate) for c in readers)),
                        RotationPolicy(mode="tree"))
    topics = reader_topics(STREAM, reader.certificate)
    sender.start(0.0)
    [path_message] = sender.subscription_seen(0.1, [leaf_topic(STREAM, reader.certificate)])
    path = frames.decode(path_message)
    assert enveloped.recipients(path.envelope).key_transport == 1

    cert, key = tmp_path / "reader.pem", tmp_path / "reader.key"
    cert.write_bytes(reader.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(reader.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    key.chmod(0o600)
    record = _openssl("-decrypt", "-inform", "DER", "-in", _verified_envelope(path, pki, tmp_path, "path"),
                      "-recip", cert, "-inkey", key)
    name, _, tag, generation, keys, derived = decode_tree_record(record)
    assert (tag[:32], generation, derived) == (path.tag, 1, [])
    held = {tree_kek_id(t, g): k for t, g, k in keys}

    rekey = sender.readers_changed(ReaderSet(tuple(Reader(c.certificate) for c in readers if c is not victim)), 1.0)
    [update] = [frames.decode(m) for m in rekey if m[0].startswith(tuple(topics)) and b"\0T" in m[0]]
    [epoch] = [frames.decode(m) for m in rekey if m[0].endswith(b"\0K")]
    [kek_id] = enveloped.recipients(update.envelope).kek_ids
    record = _openssl("-decrypt", "-inform", "DER", "-in", _verified_envelope(update, pki, tmp_path, "update"),
                      "-secretkey", held[kek_id].hex(), "-secretkeyid", kek_id.hex())
    _, _, _, generation, [(tag, g, node)], derived = decode_tree_record(record)
    assert generation == g == 2
    for tag, g in derived:  # up to the new root
        node = tree_derive(node, name, sender.stream_id, tag, g)
    [root_id] = enveloped.recipients(epoch.envelope).kek_ids
    assert root_id == tree_kek_id(tag, 2)
    record = _openssl("-decrypt", "-inform", "DER", "-in", _verified_envelope(epoch, pki, tmp_path, "epoch"),
                      "-secretkey", node.hex(), "-secretkeyid", root_id.hex())
    assert decode_key_record(record)[2] == 2  # epoch 2's key, confirmed
