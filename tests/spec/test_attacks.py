"""Attacks found in review, each refused: self-signed look-alikes, replayed runs and epochs,
signers that are not the publisher, malformed certificates, junk that would stall delivery,
readers whose keys cannot be wrapped."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import keys as akeys
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kit.pki import self_signed
from kit.wire import WireSender
from zmqsec.bridges import smime
from zmqsec.crypto import enveloped, signed
from zmqsec.keys import errors
from zmqsec.keys.ca import KeyType, Role
from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import Reader, ReaderRegistry, ReaderSet
from zmqsec.machines import intake
from zmqsec.machines.events import ReceiverPolicy
from zmqsec.machines.receiver import Delivered, Rejected, StreamReceiver
from zmqsec.machines.sender import NoReaders, RotationPolicy
from zmqsec.protocol import announce, frames


@pytest.fixture
def pki(stream_pki):
    """The session's stream PKI (tests/conftest.py): a publisher, reader portal, and a bridge as another signer."""
    return stream_pki


def _receiver(pki) -> StreamReceiver:
    return StreamReceiver(pki["portal"], pki.trust, allowed_publishers=DnAllowList(frozenset({pki.publisher_dn})))


def _feed(receiver, messages, now=0.0):
    return [e for m in messages for e in receiver.frame_received(m, now)]


def _reasons(events):
    return [e.name for e in events if isinstance(e, Rejected)]


def _delivered(events):
    return [e.payload for e in events if isinstance(e, Delivered)]


def test_self_signed_look_alike_is_not_trusted_even_when_it_vouches_for_itself(pki):
    fake = self_signed(pki["publisher"].certificate.subject)
    with pytest.raises(errors.UnknownIssuer):
        pki.trust.validate(fake.certificate, untrusted=[fake.certificate, fake.certificate])
    # Through the stream: the look-alike embeds itself (twice) in the announcement's SignedData.
    forged = WireSender("apel.jobs", Credential(fake.certificate, fake.key, (fake.certificate,)),
                          ReaderSet((Reader(pki["portal"].certificate),)))
    events = _feed(_receiver(pki), forged.start(0.0) + forged.publish(b"FORGED", 0.0) + forged.flush(0.0))
    assert _reasons(events) == ["publisher-unknown-issuer"] and _delivered(events) == []
    # Through S/MIME (what stomp-in checks): the signer's chain does not reach the store.
    opened = smime.open_message(smime.sign(b"record", fake))
    with pytest.raises(errors.UnknownIssuer):
        pki.trust.validate(opened.signer, untrusted=opened.certificates)


def test_a_signer_that_is_not_the_publisher_cannot_take_the_stream_over(pki):
    live = WireSender("apel.jobs", pki["publisher"], ReaderSet((Reader(pki["portal"].certificate),)))
    other = WireSender("apel.jobs", pki["bridge"], ReaderSet((Reader(pki["portal"].certificate),)))
    receiver = _receiver(pki)
    _feed(receiver, live.start(0.0))
    events = _feed(receiver, other.start(1.0) + other.publish(b"takeover", 1.0) + other.flush(1.0), 1.0)
    assert _reasons(events) == ["publisher-dn-not-allowed"] and _delivered(events) == []


def test_replaying_an_earlier_run_is_neither_a_restart_nor_a_second_delivery(pki):
    readers = ReaderSet((Reader(pki["portal"].certificate),))
    t0, t1 = (dt.datetime(2026, 1, 1, h, tzinfo=dt.timezone.utc) for h in (10, 11))
    old = WireSender("apel.jobs", pki["publisher"], readers, wall_clock=lambda: t0)
    old_wire = old.start(0.0) + old.publish(b"old", 0.0) + old.flush(0.0)
    live = WireSender("apel.jobs", pki["publisher"], readers, wall_clock=lambda: t1)
    live_wire = live.start(1.0) + live.publish(b"live", 1.0) + live.flush(1.0)
    receiver = _receiver(pki)
    assert _delivered(_feed(receiver, live_wire)) == [b"live"]
    events = _feed(receiver, old_wire + live_wire)  # an attacker replays the old run, then the live one
    assert _delivered(events) == []
    assert "stale-restart" in _reasons(events)
    assert set(_reasons(events)) <= {"stale-restart", "retired-stream", "replayed-sequence"}


def test_replayed_old_announcements_cannot_evict_the_current_key(pki):
    sender = WireSender("apel.jobs", pki["publisher"], ReaderSet((Reader(pki["portal"].certificate),)),
                        RotationPolicy(max_messages=1))
    wire = sender.start(0.0)
    for i in range(6):
        wire += sender.publish(b"m%d" % i, 0.0)  # a new epoch for each
    wire += sender.flush(0.0)
    announcements = [m for m in wire if frames.decode(m).topic.endswith(frames.ANNOUNCEMENT)]
    last_frame, checkpoint = [m for m in wire if frames.decode(m).topic.endswith(frames.DATA)][-1], wire[-1]
    receiver = _receiver(pki)
    _feed(receiver, [announcements[-1]])
    events = _feed(receiver, announcements[:-1])  # six older epochs, replayed
    # The current epoch's key is still held: its frame opens.
    assert _delivered(_feed(receiver, [last_frame, checkpoint])) == [b"m5"]
    assert set(_reasons(events)) <= {"stale-epoch"}


def test_junk_with_an_unknown_epoch_does_not_stall_delivery(pki):
    sender = WireSender("apel.jobs", pki["publisher"], ReaderSet((Reader(pki["portal"].certificate),)),
                          RotationPolicy(checkpoint_max=1))
    receiver = _receiver(pki)
    _feed(receiver, sender.start(0.0) + sender.publish(b"one", 0.0))
    junk = frames.encode(frames.DataFrame(frames.topic_for("apel.jobs", frames.DATA), sender.stream_id, 999, 2, b"\0" * 32))
    events = _feed(receiver, [junk] + sender.publish(b"two", 0.1), 0.1)
    assert _delivered(events) == [b"two"]


def _portal_stream(pki, **policy) -> WireSender:
    return WireSender("apel.jobs", pki["publisher"], ReaderSet((Reader(pki["portal"].certificate),)),
                      RotationPolicy(**policy))


def _data(stream_id: bytes, epoch: int, seq: int, size: int) -> list[bytes]:
    return frames.encode(frames.DataFrame(frames.topic_for("apel.jobs", frames.DATA), stream_id, epoch, seq,
                                          b"\0" * size))


def test_frames_under_an_epoch_far_above_every_key_are_refused_without_being_held(pki):
    sender = _portal_stream(pki, checkpoint_max=1)
    receiver = _receiver(pki)
    _feed(receiver, sender.start(0.0))
    events = _feed(receiver, [_data(sender.stream_id, 1 + 17, seq, 1000) for seq in range(1, 101)])
    assert _reasons(events) == ["no-key"] * 100 and receiver.held == 0
    events = _feed(receiver, [_data(sender.stream_id, 1 + 16, 101, 1000)])  # near enough: held for its key
    assert events == [] and receiver.held == 1


def test_frames_nobody_can_open_fill_half_the_byte_budget_and_keyed_frames_still_find_room(pki):
    sender = _portal_stream(pki, checkpoint_max=1)
    receiver = StreamReceiver(pki["portal"], pki.trust, policy=ReceiverPolicy(max_held_bytes=1_000_000))
    _feed(receiver, sender.start(0.0))
    bloat = [_data(b"\7" * 16, 1, seq, 100_000) for seq in range(1, 11)]  # a made-up run: 1 MB
    events = _feed(receiver, bloat)
    assert _reasons(events) == ["overloaded"] * 6 and receiver.held_bytes <= 500_000
    assert _delivered(_feed(receiver, sender.publish(b"x" * 100_000, 0.1), 0.1)) == [b"x" * 100_000]


def test_checkpoints_in_any_order_vouch_for_every_frame_still_held(pki):
    sender = _portal_stream(pki, checkpoint_max=2)
    wire = sender.start(0.0)
    for i in range(8):
        wire += sender.publish(b"m%d" % i, 0.0)
    wire += sender.flush(0.0)
    checkpoints = [m for m in wire if m[0].endswith(frames.CHECKPOINT)]
    others = [m for m in wire if not m[0].endswith(frames.CHECKPOINT)]
    receiver = _receiver(pki)
    events = _feed(receiver, others + checkpoints[::-1])  # the last checkpoint first
    assert _delivered(events) == [b"m%d" % i for i in range(8)] and _reasons(events) == []


def test_a_genuine_announcement_re_sent_under_other_headers_is_refused_without_cryptography(pki, monkeypatch):
    sender = _portal_stream(pki)
    wire = sender.start(0.0)
    receiver = _receiver(pki)
    _feed(receiver, wire)
    announcement = frames.decode(next(m for m in wire if m[0].endswith(frames.ANNOUNCEMENT)))
    copies = [frames.encode(frames.Announcement(announcement.topic, stream_id, epoch, announcement.envelope,
                                                announcement.signature))
              for stream_id, epoch in [(announcement.stream_id, 2), (b"\1" * 16, 1), (b"\2" * 16, 9)]]

    def no_crypto(*_, **__):
        raise AssertionError("cryptography on a re-headed announcement")

    monkeypatch.setattr(intake, "verify_announcement", no_crypto)
    monkeypatch.setattr(intake, "open_announcement", no_crypto)
    assert _reasons(_feed(receiver, copies)) == ["header-mismatch"] * 3
    assert _delivered(_feed(receiver, sender.publish(b"still", 0.1) + sender.flush(0.1), 0.1)) == [b"still"]


def _no_cryptography(monkeypatch) -> None:
    def no_crypto(*_, **__):
        raise AssertionError("cryptography on a re-headed announcement")

    monkeypatch.setattr(signed, "_verify_raw", no_crypto)  # the signature math
    monkeypatch.setattr(intake, "open_announcement", no_crypto)  # the private-key operation
    monkeypatch.setattr(intake.TrustStore, "validate", no_crypto)  # the certificate chain


def test_an_announcement_never_seen_re_sent_under_other_headers_costs_a_parse(pki, monkeypatch):
    """Version 2 signs the header (§4.3): a genuine announcement re-headed -- as version 2, or downgraded to
    version 1 -- is refused before any signature math, chain validation or private-key operation, even by a
    reader that never opened the genuine one."""
    sender = _portal_stream(pki)
    wire = sender.start(0.0)
    genuine = frames.decode(next(m for m in wire if m[0].endswith(frames.ANNOUNCEMENT)))
    assert genuine.version == 2
    copies = [frames.encode(frames.Announcement(genuine.topic, stream_id, epoch, genuine.envelope,
                                                genuine.signature, version))
              for stream_id, epoch, version in [(genuine.stream_id, 2, 2), (b"\1" * 16, 1, 2),
                                                (genuine.stream_id, 7, 1), (b"\2" * 16, 1, 1)]]
    copies.append([frames.topic_for("other", frames.ANNOUNCEMENT), copies[0][1]])  # another stream's topic
    receiver = _receiver(pki)
    with monkeypatch.context() as patched:
        _no_cryptography(patched)
        assert _reasons(_feed(receiver, copies)) == ["header-mismatch"] * 5
    assert _delivered(_feed(receiver, wire + sender.publish(b"genuine", 0.1) + sender.flush(0.1), 0.1)) == [b"genuine"]


def test_version_1_announcements_are_still_read_and_version_2_must_sign_its_header(pki):
    """A version 1 announcement (its header bound only by the key record) still opens; a version 2 one whose
    signature lacks the header attribute is refused."""
    sender = _portal_stream(pki)
    wire = sender.start(0.0) + sender.publish(b"one", 0.0) + sender.flush(0.0)
    genuine = frames.decode(next(m for m in wire if m[0].endswith(frames.ANNOUNCEMENT)))
    bare = signed.sign(genuine.envelope, pki["publisher"])  # signed the version 1 way: the envelope only
    attribute = announce.header_attribute(genuine.topic, genuine.stream_id, genuine.epoch)
    assert len(attribute) == 44 and 44 <= len(genuine.signature) - len(bare) <= 46  # its cost (§4.3)
    others = [m for m in wire if not m[0].endswith(frames.ANNOUNCEMENT)]
    v1 = frames.encode(frames.Announcement(genuine.topic, genuine.stream_id, genuine.epoch, genuine.envelope, bare, 1))
    assert frames.decode(v1).version == 1
    assert _delivered(_feed(_receiver(pki), [v1] + others)) == [b"one"]
    v2 = frames.encode(frames.Announcement(genuine.topic, genuine.stream_id, genuine.epoch, genuine.envelope, bare, 2))
    events = _feed(_receiver(pki), [v2] + others)
    assert _reasons(events)[0] == "header-mismatch" and _delivered(events) == []
    for version in (0, 3):
        with pytest.raises(frames.FrameError) as err:
            frames.decode([genuine.topic, v1[1].replace(b"\x95\x01", b"\x95" + bytes((version,)), 1)])
        assert err.value.reason == "unknown-version"


def test_a_certificate_with_a_duplicated_extension_is_refused_not_fatal(pki):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = akeys.PublicKeyInfo.load(key.public_key().public_bytes(serialization.Encoding.DER,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    name = ax.Name.build({"common_name": "evil"})
    now = dt.datetime.now(dt.timezone.utc)
    ext = {"extn_id": "basic_constraints", "critical": False, "extn_value": {"ca": False}}
    tbs = ax.TbsCertificate({"version": "v3", "serial_number": 1, "signature": {"algorithm": "sha256_rsa"}, "issuer": name,
                             "validity": {"not_before": ax.Time({"utc_time": now}),
                                          "not_after": ax.Time({"utc_time": now + dt.timedelta(days=1)})},
                             "subject": name, "subject_public_key_info": spki, "extensions": [ext, ext]})
    cert = x509.load_der_x509_certificate(ax.Certificate({
        "tbs_certificate": tbs, "signature_algorithm": {"algorithm": "sha256_rsa"},
        "signature_value": key.sign(tbs.dump(), padding.PKCS1v15(), hashes.SHA256())}).dump())
    with pytest.raises(errors.CertificateRejected) as exc:
        pki.trust.validate(cert)
    assert exc.value.reason == "malformed-certificate"
    envelope = enveloped.envelope(b"x", enveloped.certificate_recipients([pki["portal"].certificate]))
    topic = frames.topic_for("apel.jobs", frames.ANNOUNCEMENT)
    announcement = frames.Announcement(topic, b"\1" * 16, 1, envelope, signed.sign(
        envelope, Credential(cert, key), attributes=[announce.header_attribute(topic, b"\1" * 16, 1)]))
    events = _receiver(pki).frame_received(frames.encode(announcement), 0.0)
    assert len(_reasons(events)) == 1 and _reasons(events)[0].startswith(("announcement-", "publisher-"))


def test_readers_whose_key_cannot_be_wrapped_are_refused(pki, tmp_path):
    ec_reader = pki.ca.issue(role=Role.READER, cn="ec-reader", out_dir=tmp_path, key_type=KeyType.EC)
    registry = ReaderRegistry(tmp_path / "readers.d")
    with pytest.raises(errors.RegistryError, match="must be RSA"):
        registry.add(ec_reader.certificate)
    # A stream asked to rekey for a set it cannot wrap for stops using the old key instead.
    sender = WireSender("apel.jobs", pki["publisher"], ReaderSet((Reader(pki["portal"].certificate),)))
    sender.start(0.0)
    sender.readers_changed(ReaderSet((Reader(ec_reader.certificate),)), 1.0)
    assert sender.epoch == 0
    with pytest.raises(NoReaders):
        sender.publish(b"nobody may read this", 1.0)
