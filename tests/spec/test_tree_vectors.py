"""tests/vectors/tree.json (docs/PROTOCOL.md §4.6): each vector states its verdict; this implementation must reach
it, following the spec step by step (no keyring: the chain vector is opened by hand)."""

from __future__ import annotations

import datetime as dt
import json

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kit import paths
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import TrustStore
from zmqsec.protocol import frames
from zmqsec.protocol.announce import (
    AnnouncementRejected,
    open_announcement,
    open_tree_announcement,
    verify_announcement,
)
from zmqsec.protocol.primitives import KeyRecordError, decode_tree_record, tree_derive, tree_kek_id

VECTORS = json.loads((paths.VECTORS / "tree.json").read_text())["vectors"]


def _parts(hexes):
    return [bytes.fromhex(p) for p in hexes]


def _chain(v):
    """Path envelope (our certificate) -> the update (a key of our path) -> derived keys -> the epoch key (root)."""
    trust = TrustStore.from_certificates([x509.load_pem_x509_certificate(v["ca_cert"].encode())],
                                         [x509.load_pem_x509_crl(v["crl"].encode())])
    at = dt.datetime.fromisoformat(v["at"])
    cred = Credential(x509.load_pem_x509_certificate(v["reader_cert"].encode()),
                      serialization.load_pem_private_key(v["reader_key"].encode(), None))
    held: dict[bytes, bytes] = {}
    for name in ("path_parts", "update_parts"):
        if name not in v:
            continue
        frame = frames.decode(_parts(v[name]))
        verify_announcement(frame, trust, at=at)
        got = open_tree_announcement(frame, cred, held)
        node = got.keys[0]
        held.update((k.kek_id, k.key) for k in got.keys)
        key = node.key
        for tag, generation in got.derived:
            key = tree_derive(key, frames.stream_name(frame.topic), frame.stream_id, tag, generation)
            held[tree_kek_id(tag, generation)] = key
    frame = frames.decode(_parts(v["parts"]))
    return open_announcement(frame, verify_announcement(frame, trust, at=at), cred, held)


def _verdict(v):
    try:
        if v["kind"] == "tree-key-record":
            return "success", decode_tree_record(bytes.fromhex(v["record"]))
        if v["kind"] == "tree-derive":
            return "success", None
        if v["kind"] == "tree-chain":
            return "success", _chain(v)
        return "success", frames.decode(_parts(v["parts"]))
    except frames.FrameError as exc:
        return exc.reason, None
    except KeyRecordError:
        return "key-confirmation", None
    except AnnouncementRejected as exc:
        return exc.reason, None


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_tree_vector(vector):
    verdict, value = _verdict(vector)
    assert verdict == vector["expect"]
    if verdict != "success":
        return
    if vector["kind"] == "tree-key-record":
        assert value == (bytes.fromhex(vector["stream_name"]), bytes.fromhex(vector["stream_id"]),
                         vector["tag"].encode(), vector["generation"],
                         [(t.encode(), g, bytes.fromhex(k)) for t, g, k in vector["keys"]],
                         [(t.encode(), g) for t, g in vector["derived"]])
        assert msgpack.unpackb(bytes.fromhex(vector["record"]))[6] == vector["derived_lengths"]  # on the wire
    elif vector["kind"] == "tree-derive":
        args = (bytes.fromhex(vector["stream_name"]), bytes.fromhex(vector["stream_id"]), vector["tag"].encode(),
                vector["generation"])
        assert tree_derive(bytes.fromhex(vector["key"]), *args).hex() == vector["derived"]
        assert tree_kek_id(*args[2:]).hex() == vector["kek_id"]
    elif vector["kind"] == "tree-chain":
        assert value.key.hex() == vector["key"] and value.epoch == vector["epoch"]
    else:
        assert isinstance(value, frames.TreeAnnouncement) and value.tag == b"0110"


def test_the_vectors_cover_every_verdict_of_the_mode():
    assert {v["expect"] for v in VECTORS} == {"success", "key-confirmation", "bad-topic", "no-group-key"}
