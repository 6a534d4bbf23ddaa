"""Reader groups (docs/PROTOCOL.md §4.5): bounded announcements for large registries, driven alone
with pinned time, and each envelope read back by the openssl CLI."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from asn1crypto import cms as asn1_cms

from kit.pki import Pki
from kit.wire import WireSender, feed, of_kind, publish, reaching, reader_set, size
from zmqsec.crypto import cms, enveloped
from zmqsec.keys.ca import Role
from zmqsec.machines.receiver import Delivered, Gap, KeyAccepted, Rejected, StreamReceiver
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol import frames
from zmqsec.protocol.groups import group_bits, reader_bits, reader_topics
from zmqsec.protocol.primitives import decode_group_record, decode_key_record

READERS = 60
GROUP_SIZE = 8  # 60 readers -> 3 tag bits -> 8 groups


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A publisher and READERS reader certificates over three shared key pairs (each still its own recipient)."""
    pki = Pki.create(tmp_path_factory.mktemp("groups"), "/O=zmqsec test/CN=Group CA", publisher=Role.PUBLISHER)
    pki.issue_shared("reader", READERS, digits=3)
    return pki


@pytest.fixture(scope="module")
def readers(pki) -> list:
    """The readers' credentials, in order (the same objects in every test of the module)."""
    return [pki[f"reader{i:03d}"] for i in range(READERS)]



def _reaching(credential, messages):
    return reaching("apel.jobs", credential, messages)


def _sender(pki, readers) -> WireSender:
    return WireSender("apel.jobs", pki["publisher"], reader_set(readers), RotationPolicy(group_size=GROUP_SIZE, checkpoint_max=16))









def test_every_reader_reads_everything_through_its_own_topics_only(pki, readers):
    sender = _sender(pki, readers)
    wire = sender.start(0.0) + publish(sender, 30)
    groups, [announcement] = of_kind(wire, b"G"), of_kind(wire, b"K")
    assert group_bits(READERS, GROUP_SIZE) == 3 and len(groups) == sender.stats.groups
    assert 4 <= len(groups) <= 8  # tags are hash prefixes: some of the 8 may be empty
    wrapped = enveloped.recipients(frames.decode(announcement).envelope)
    assert wrapped.key_transport == 0 and len(wrapped.kek_ids) == len(groups)  # the epoch key: one wrap per group
    for reader in readers:
        reaching = _reaching(reader, wire)
        assert len(of_kind(reaching, b"G")) == 1  # its own group's key, none of the others'
        events = feed(StreamReceiver(reader, pki.trust), reaching)
        assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record %d" % i for i in range(30)]
        assert not [e for e in events if isinstance(e, (Rejected, Gap))], reader.certificate.subject


def test_revoking_one_reader_renews_only_its_group_and_it_reads_nothing_after(pki, readers):
    sender = _sender(pki, readers)
    before = sender.start(0.0) + publish(sender, 20)
    victim, others = readers[7], readers[:7] + readers[8:]
    rekey = sender.readers_changed(reader_set(others), 1.0)
    (renewed,) = [frames.decode(m) for m in of_kind(rekey, b"G")]
    assert renewed.tag == reader_bits(victim.certificate)[:3]
    assert len(of_kind(rekey, b"K")) == 1
    mates = [r for r in others if reader_bits(r.certificate)[:3] == renewed.tag]
    # One RSA encryption per remaining member of the victim's group: its new group key, for each of them alone.
    assert enveloped.recipients(renewed.envelope).key_transport == len(mates) > 0
    after = publish(sender, 20, 1.0, start=20)

    # What one reader must receive for this rekey is bounded by its group, not by the registry.
    single = WireSender("apel.jobs", pki["publisher"], reader_set(others), RotationPolicy())
    single_bytes = size(single.start(0.0))
    for reader in others:
        assert size(_reaching(reader, rekey)) < single_bytes / 2

    receiver = StreamReceiver(victim, pki.trust)
    events = feed(receiver, _reaching(victim, before + rekey + after)) + receiver.tick(10.0)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record %d" % i for i in range(20)]
    reasons = [e.name for e in events if isinstance(e, Rejected)]
    assert reasons.count("not-a-recipient") == 2  # the new group key, then the epoch key wrapped without it
    assert reasons.count("no-key") == 20
    for reader in others[::5]:
        receiver = StreamReceiver(reader, pki.trust)
        events = feed(receiver, _reaching(reader, before + rekey + after)) + receiver.tick(10.0)
        assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record %d" % i for i in range(40)]
        assert not [e for e in events if isinstance(e, (Rejected, Gap))]


def test_a_new_reader_gets_a_new_group_key_not_the_old_one(pki, readers):
    """Adding a reader renews its group's key: it cannot unwrap epoch keys sent before it was authorized."""
    newcomer, rest = readers[0], readers[1:]
    sender = _sender(pki, rest)
    wire = sender.start(0.0)
    rekey = sender.readers_changed(reader_set(readers), 1.0)
    assert [frames.decode(m).tag for m in of_kind(rekey, b"G")] == [reader_bits(newcomer.certificate)[:3]]
    receiver = StreamReceiver(newcomer, pki.trust)
    events = feed(receiver, _reaching(newcomer, wire)) + receiver.tick(10.0)
    assert not [e for e in events if isinstance(e, KeyAccepted)]
    events = feed(receiver, _reaching(newcomer, rekey), 10.0)
    assert [e.epoch for e in events if isinstance(e, KeyAccepted)] == [2]


def test_an_epoch_key_that_arrives_before_its_group_key_waits_for_it(pki, readers):
    reader = readers[3]
    sender = _sender(pki, readers)
    wire = _reaching(reader, sender.start(0.0) + publish(sender, 5))
    receiver = StreamReceiver(reader, pki.trust)
    reordered = of_kind(wire, b"K") + of_kind(wire, b"G") + of_kind(wire, b"D") + of_kind(wire, b"S")
    events = feed(receiver, reordered)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record %d" % i for i in range(5)]
    assert not [e for e in events if isinstance(e, Rejected)]


def test_a_subscription_brings_back_only_the_announcements_it_matches(pki, readers):
    reader = readers[5]
    sender = _sender(pki, readers)
    sender.start(0.0)
    mine = frames.group_topic("apel.jobs", reader_bits(reader.certificate)[:3])
    out = sender.subscription_seen(1.0, reader_topics("apel.jobs", reader.certificate))
    # the reader's group key, then the epoch announcement that needs it, then where the run comes from
    assert [m[0] for m in out] == [mine, frames.topic_for("apel.jobs", frames.ANNOUNCEMENT),
                                   frames.topic_for("apel.jobs", frames.RUN)]
    assert sender.subscription_seen(1.01, [mine]) == []  # coalesced: at most once per 50 ms ...
    assert [m[0] for m in sender.tick(1.06)] == [mine]  # ... and sent when the gap has passed, not dropped
    relay = sender.subscription_seen(2.0, [b"apel.jobs\0"])  # a relay or recorder: everything
    assert len(of_kind(relay, b"G")) == sender.stats.groups and len(of_kind(relay, b"K")) == 1


def test_group_and_epoch_envelopes_open_and_verify_with_openssl(pki, readers, tmp_path):
    reader = readers[11]
    sender = _sender(pki, readers)
    wire = _reaching(reader, sender.start(0.0))
    group, epoch = frames.decode(of_kind(wire, b"G")[0]), frames.decode(of_kind(wire, b"K")[0])
    cert, key = tmp_path / "reader.pem", tmp_path / "reader.key"
    cert.write_bytes(reader.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(reader.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    key.chmod(0o600)
    for name, frame in (("group", group), ("epoch", epoch)):
        (tmp_path / f"{name}.der").write_bytes(frame.envelope)
        (tmp_path / f"{name}.sig").write_bytes(frame.signature)
        subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", tmp_path / f"{name}.sig", "-binary",
                        "-content", tmp_path / f"{name}.der", "-CApath", pki.trust_dir, "-purpose", "smimesign",
                        "-out", "/dev/null"], check=True, capture_output=True)
    record = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "group.der",
                             "-recip", cert, "-inkey", key], check=True, capture_output=True).stdout
    _, _, tag, generation, kek = decode_group_record(record)
    assert (tag, generation) == (group.tag, group.generation)
    record = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "epoch.der",
                             "-secretkey", kek.hex(), "-secretkeyid", (tag + b"." + str(generation).encode()).hex()],
                            check=True, capture_output=True).stdout
    assert decode_key_record(record)[2] == 1  # epoch 1's key, confirmed


@pytest.mark.parametrize("topic", [b"apel.jobs\0G012.", b"apel.jobs\0G01", b"apel.jobs\0Gx.", b"apel.jobs\0G" + b"0" * 17 + b".",
                                   b"apel.jobs\0K0.", b"apel.jobs\0D."])
def test_malformed_group_topics_are_refused(topic):
    with pytest.raises(frames.FrameError) as err:
        frames.decode([topic, b"\x95\x01\xc4\x10" + b"\0" * 16 + b"\x01\xc4\x00\xc4\x00"])
    assert err.value.reason == "bad-topic"


def test_a_copy_under_another_header_does_not_poison_the_genuine_group_key(pki, readers):
    """The topic and generation are outside the signature: a copy of a genuine G under another tag or
    generation is refused on its own, and the genuine one is still accepted after it."""
    reader = readers[9]
    sender = _sender(pki, readers)
    wire = _reaching(reader, sender.start(0.0) + publish(sender, 3))
    genuine = frames.decode(of_kind(wire, b"G")[0])
    forged = [frames.encode(frames.GroupAnnouncement(frames.group_topic("apel.jobs", b""), genuine.stream_id,
                                                     genuine.generation, genuine.envelope, genuine.signature)),
              frames.encode(frames.GroupAnnouncement(genuine.topic, genuine.stream_id, genuine.generation + 5,
                                                     genuine.envelope, genuine.signature))]
    receiver = StreamReceiver(reader, pki.trust)
    events = feed(receiver, forged)
    assert [e.name for e in events if isinstance(e, Rejected)] == ["header-mismatch", "header-mismatch"]
    events = feed(receiver, wire)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record %d" % i for i in range(3)]


def test_replayed_old_group_keys_do_not_push_out_the_current_one(pki, readers):
    """A reader that joined late (it holds only its group's current key) is sent superseded, validly signed
    group keys of its own group: they must not evict the current one, or the next rotation locks it out."""
    # A member of the largest group (60 readers in 8 groups: it has at least 7 peers, whatever the
    # certificates' random serials make of the tags).
    reader = max(readers, key=lambda r: sum(reader_bits(o.certificate)[:3] == reader_bits(r.certificate)[:3]
                                            for o in readers))
    mine = reader_bits(reader.certificate)[:3]
    peers = [r for r in readers if r is not reader and reader_bits(r.certificate)[:3] == mine]
    assert len(peers) >= 5
    sender = _sender(pki, readers)
    wire = sender.start(0.0)
    for i in range(5):  # five membership changes in our group: five superseded group keys
        wire += sender.readers_changed(reader_set([r for r in readers if r not in peers[:i + 1]]), 1.0 + i)
    groups = of_kind(_reaching(reader, wire), b"G")
    assert len(groups) == 6
    receiver = StreamReceiver(reader, pki.trust)
    late = groups[-1:] + of_kind(_reaching(reader, wire), b"K")[-1:] + _reaching(reader, publish(sender, 2, 10.0))
    assert [e.payload for e in feed(receiver, late, 10.0) if isinstance(e, Delivered)] == [b"record 0", b"record 1"]
    feed(receiver, groups[:-1], 10.0)  # the replay
    rotation = sender.tick(5000.0)  # age-based rotation: a new epoch key, wrapped under the unchanged group keys
    assert of_kind(rotation, b"K") and all(g in wire for g in of_kind(rotation, b"G"))  # (periodic re-sends only)
    events = feed(receiver, _reaching(reader, rotation + publish(sender, 2, 5000.0, start=2)), 5000.0)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"record 2", b"record 3"]


def test_any_prefix_subscription_brings_back_the_group_keys_it_matches(pki, readers):
    sender = _sender(pki, readers)
    sender.start(0.0)
    out = sender.subscription_seen(1.0, [b"apel."])  # a recorder of every stream whose name starts "apel."
    assert len(of_kind(out, b"G")) == sender.stats.groups and len(of_kind(out, b"K")) == 1


def test_a_large_envelope_is_opened_by_finding_our_recipient_info_alone(readers, tmp_path):
    """Beyond 64 recipients the reader compares DER bytes to find its RecipientInfo and parses only that one;
    the answers must be those of the full parse (and of openssl)."""
    recipients = [r.certificate for r in readers] * 2  # 120 RecipientInfos (a certificate may repeat)
    der = enveloped.envelope(b"epoch key record", enveloped.certificate_recipients(recipients[:-1]))
    full = asn1_cms.ContentInfo.load(der)  # the full parse, by asn1crypto
    assert full.dump(force=True) == der  # plain definite-length DER: the form the byte comparison walks
    assert enveloped.recipients(der).key_transport == len(full["content"]["recipient_infos"]) == 119
    for reader in (readers[0], readers[-1]):
        assert enveloped.open_envelope(der, reader) == b"epoch key record"
    der = enveloped.envelope(b"epoch key record", enveloped.certificate_recipients([r.certificate for r in readers[:-1]] * 2))  # without the last reader
    with pytest.raises(cms.NotARecipient):
        enveloped.open_envelope(der, readers[-1])
    (tmp_path / "e.der").write_bytes(der)
    (tmp_path / "r.pem").write_bytes(readers[5].certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "r.key").write_bytes(readers[5].key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                  serialization.NoEncryption()))
    out = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "e.der", "-recip",
                          tmp_path / "r.pem", "-inkey", tmp_path / "r.key"], check=True, capture_output=True).stdout
    assert out == b"epoch key record"
