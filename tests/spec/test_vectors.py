"""tests/vectors/frames.json: each vector states its verdict; this implementation must reach it."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kit import paths
from zmqsec.errors import RejectReason
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import TrustStore
from zmqsec.protocol import frames
from zmqsec.protocol.announce import AnnouncementRejected, open_announcement, open_group_announcement, verify_announcement
from zmqsec.protocol.checkpoint import checkpoint_valid
from zmqsec.protocol.datacipher import DataKey, OpenFailed
from zmqsec.protocol.primitives import (
    KeyRecordError,
    associated_data,
    decode_group_record,
    decode_key_record,
    frame_digest,
    header_digest,
    nonce,
)

VECTORS = json.loads((paths.VECTORS / "frames.json").read_text())["vectors"]


def _parts(v):
    return [bytes.fromhex(p) for p in v["parts"]]


def _verdict(v) -> tuple[str, object]:
    kind = v["kind"]
    try:
        if kind == "key-record":
            return "success", decode_key_record(bytes.fromhex(v["record"]))
        if kind == "group-key-record":
            return "success", decode_group_record(bytes.fromhex(v["record"]))
        frame = frames.decode(_parts(v))
        if kind == "data":
            try:
                payload = DataKey(bytes.fromhex(v["key"])).open(frame.topic, frame.stream_id, frame.epoch, frame.seq,
                                                                frame.ciphertext)
            except OpenFailed:
                return "decrypt-failed", None
            return "success", payload
        if kind == "checkpoint":
            ok = checkpoint_valid(frame, x509.load_pem_x509_certificate(v["publisher_cert"].encode()))
            return ("success", frame) if ok else ("bad-checkpoint", None)
        if kind in ("announcement", "grouped-announcement"):
            trust = TrustStore.from_certificates([x509.load_pem_x509_certificate(v["ca_cert"].encode())],
                                                 [x509.load_pem_x509_crl(v["crl"].encode())])
            at = dt.datetime.fromisoformat(v["at"])
            cred = Credential(x509.load_pem_x509_certificate(v["reader_cert"].encode()),
                              serialization.load_pem_private_key(v["reader_key"].encode(), None))
            groups = {}
            if "group_parts" in v:  # the reader's group key first, from its own envelope
                group_frame = frames.decode([bytes.fromhex(p) for p in v["group_parts"]])
                verify_announcement(group_frame, trust, at=at)
                group = open_group_announcement(group_frame, cred)
                assert (group.key_id.hex(), group.key.hex()) == (v["kek_id"], v["kek"])
                groups[group.key_id] = group.key
            publisher = verify_announcement(frame, trust, at=at)
            return "success", open_announcement(frame, publisher, cred, groups)
        return "success", frame
    except frames.FrameError as exc:
        return exc.reason, None
    except KeyRecordError:
        return "key-confirmation", None
    except AnnouncementRejected as exc:
        return exc.reason, None


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector):
    verdict, value = _verdict(vector)
    assert verdict == vector["expect"]
    if verdict != "success":
        return
    if vector["kind"] == "data":
        assert value == bytes.fromhex(vector["payload"])
        assert frame_digest(_parts(vector)[0], _parts(vector)[1]).hex() == vector["digest"]
        frame = frames.decode(_parts(vector))
        if "nonce" in vector:  # the derivations of §2, spelled out in the vector
            assert nonce(frame.epoch, frame.seq).hex() == vector["nonce"]
            assert associated_data(frame.topic, frame.stream_id, frame.epoch, frame.seq).hex() == vector["aad"]
    elif vector["kind"] == "key-record":
        assert value == (bytes.fromhex(vector["topic"]), bytes.fromhex(vector["stream_id"]), vector["epoch"],
                         bytes.fromhex(vector["key"]))
    elif vector["kind"] == "group-key-record":
        assert value == (bytes.fromhex(vector["stream_name"]), bytes.fromhex(vector["stream_id"]), vector["tag"].encode(),
                         vector["generation"], bytes.fromhex(vector["kek"]))
    elif vector["kind"] in ("announcement", "grouped-announcement"):
        assert value.key.hex() == vector["key"] and value.epoch == vector["epoch"]
        if "header_digest" in vector:  # what the version 2 signature's header attribute holds (§4.3)
            frame = frames.decode(_parts(vector))
            assert header_digest(frame.topic, frame.stream_id, frame.epoch).hex() == vector["header_digest"]


def test_every_documented_verdict_is_exercised():
    assert {v["expect"] for v in VECTORS} >= {"success", "decrypt-failed", "unknown-version", "bad-msgpack",
                                              "bad-topic", "key-confirmation", "bad-checkpoint", "not-a-recipient",
                                              "no-group-key", "header-mismatch"}


def test_the_spec_lists_every_refusal_reason():
    """PROTOCOL.md §6.3 and zmqsec.errors.RejectReason name the same refusals."""
    spec = (paths.DOCS / "PROTOCOL.md").read_text()
    section = spec.split("## 6.3 Refusal reasons", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([a-z0-9-]+)`", row)}
    assert listed == {r.value for r in RejectReason}


def test_the_vector_file_holds_what_its_generator_builds(tmp_path, monkeypatch):
    """generate.py runs on today's code and rebuilds frames.json: the vectors with fixed keys byte for byte, those
    under the test PKI (made anew each run) with the same names and verdicts."""
    monkeypatch.syspath_prepend(str(paths.VECTORS))
    spec = importlib.util.spec_from_file_location("generate", paths.VECTORS / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    monkeypatch.setattr(generator, "OUT", tmp_path / "frames.json")
    generator.main(tmp_path)
    built = json.loads((tmp_path / "frames.json").read_text())["vectors"]
    assert [(v["name"], v["expect"]) for v in built] == [(v["name"], v["expect"]) for v in VECTORS]
    kinds = ("data", "frame", "key-record", "group-key-record")
    fixed = [v for v in VECTORS if v["kind"] in kinds and not v["name"].startswith("announcement")]
    assert len(fixed) == 12 and fixed == [v for v in built if v["kind"] in kinds and not v["name"].startswith("announcement")]
