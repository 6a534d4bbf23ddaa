"""The stream's state machines, driven alone with pinned time: the spec, behaviour by behaviour."""

from __future__ import annotations

import msgpack
import pytest

from kit.pki import Pki
from kit.wire import Insider, WireSender, kinds
from zmqsec.keys.ca import Role
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.receiver import Delivered, Gap, KeyAccepted, Rejected, Restarted, StreamReceiver
from zmqsec.machines.sender import NoReaders, RotationPolicy
from zmqsec.protocol import frames


@pytest.fixture
def pki(stream_pki):
    """The session's stream PKI (tests/conftest.py): publisher, portal, dashboard, central, outsider."""
    return stream_pki


def _readers(pki, *names) -> ReaderSet:
    return ReaderSet(tuple(Reader(pki[n].certificate) for n in names))


def _sender(pki, *names, **policy) -> WireSender:
    return WireSender("apel.jobs", pki["publisher"], _readers(pki, *names), RotationPolicy(**policy))


def _receiver(pki, name) -> StreamReceiver:
    return StreamReceiver(pki[name], pki.trust)


def _feed(receiver, messages, now=0.0):
    events = []
    for m in messages:
        events += receiver.frame_received(m, now)
    return events


def _delivered(events):
    return [e.payload for e in events if isinstance(e, Delivered)]


def _run(sender, count, now=0.0, prefix=b"record"):
    out = []
    for i in range(count):
        out += sender.publish(prefix + b" %d" % i, now)
    return out + sender.flush(now)


def test_every_authorized_reader_gets_every_message_in_order(pki):
    sender = _sender(pki, "portal", "dashboard", "central", checkpoint_max=16)
    wire = sender.start(0.0) + _run(sender, 100)
    for name in ("portal", "dashboard", "central"):
        events = _feed(_receiver(pki, name), wire)
        assert _delivered(events) == [b"record %d" % i for i in range(100)]
        assert not [e for e in events if isinstance(e, (Rejected, Gap))]


def test_a_reader_outside_the_set_reads_nothing(pki):
    sender = _sender(pki, "portal")
    events = _feed(_receiver(pki, "outsider"), sender.start(0.0) + _run(sender, 10))
    assert _delivered(events) == []
    assert [e.name for e in events if isinstance(e, Rejected)] == ["not-a-recipient"]


def test_nothing_is_delivered_before_a_checkpoint_vouches_for_it(pki):
    sender = _sender(pki, "portal", checkpoint_max=256)
    receiver = _receiver(pki, "portal")
    wire = sender.start(0.0)
    for i in range(5):
        wire += sender.publish(b"r%d" % i, 0.0)
    assert _delivered(_feed(receiver, wire)) == []
    assert _delivered(_feed(receiver, sender.flush(0.0))) == [b"r0", b"r1", b"r2", b"r3", b"r4"]


def test_checkpoint_flushes_on_time(pki):
    """A frame waits at most ``checkpoint_interval`` for its checkpoint (here also the least interval)."""
    sender = _sender(pki, "portal", checkpoint_interval=0.02, checkpoint_min_interval=0.02)
    sender.start(1.0)
    sender.publish(b"x", 1.0)
    assert kinds(sender.actions.tick(1.0)) == [frames.CHECKPOINT]  # the first after a quiet spell: at once
    sender.publish(b"y", 1.001)
    assert sender.tick(1.01) == []
    assert kinds(sender.actions.tick(1.021)) == [frames.CHECKPOINT]


def test_checkpoints_go_out_as_often_as_the_least_interval_allows(pki):
    """A frame after a quiet spell is signed at the publisher's next turn; later ones wait until
    ``checkpoint_min_interval`` has passed since the previous checkpoint, never ``checkpoint_interval``."""
    sender = _sender(pki, "portal", checkpoint_interval=0.02, checkpoint_min_interval=0.002)
    sender.start(1.0)
    sender.publish(b"first", 1.0)
    assert kinds(sender.actions.tick(1.0001)) == [frames.CHECKPOINT]
    sender.publish(b"second", 1.0005)
    gap = sender._checkpoints.gap  # the least interval, or five signatures where signing is slower (measured)
    assert 0.002 <= gap < 0.02 and sender.next_deadline == pytest.approx(1.0001 + gap)
    assert sender.tick(1.0001 + gap - 0.0002) == []
    assert kinds(sender.actions.tick(1.0001 + gap + 0.0001)) == [frames.CHECKPOINT]


def test_slow_signatures_space_checkpoints_out_to_a_fifth_of_a_core():
    """The gap between checkpoints is at least five times what a signature costs (measured), up to the
    longest wait ``interval``."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from zmqsec.machines.checkpoints import Checkpointer

    ticks = iter(x * 0.001 for x in range(1000))  # the clock advances 1 ms per reading: a 1 ms signature
    points = Checkpointer(b"apel.jobs", b"\x01" * 16, ec.generate_private_key(ec.SECP256R1()), interval=0.02,
                          maximum=256, min_interval=0.002, clock=lambda: next(ticks))
    points.add(1, b"\x00" * 32, 5.0)
    assert points.due(5.0) and points.sign(5.0) is not None
    assert points.cost == pytest.approx(0.001) and points.gap == pytest.approx(0.005)
    points.add(2, b"\x00" * 32, 5.001)
    assert not points.due(5.0049) and points.due(5.005) and points.deadline == pytest.approx(5.005)
    points.cost = 0.5  # a signature slower than any wait: the longest wait still bounds it
    assert points.gap == 0.02 and points.deadline == pytest.approx(5.02)


def _forger(pki, sender, wire):
    """An insider: the 'dashboard' reader, holding epoch 1's data key, encrypting frames of its own."""
    insider = Insider(pki["dashboard"], pki.trust)
    assert any([insider.learn(m) for m in wire])
    return lambda seq, payload: insider.forge(sender.stream_id, 1, seq, payload)


def test_insider_cannot_forge(pki):
    """An authorized reader holds the data key; the others still refuse its frames."""
    sender = _sender(pki, "portal", "dashboard", checkpoint_max=8)
    wire = sender.start(0.0)
    forge = _forger(pki, sender, wire)
    wire += _run(sender, 3)  # seq 1..3, checkpointed
    # The insider forges seq 4 and 5 with the real key, ahead of the publisher's genuine 4 and 5.
    forged = [forge(4, b"forged four"), forge(5, b"forged five")]
    genuine = _run(sender, 3, prefix=b"genuine")  # seq 4..6 and their checkpoint
    victim = _receiver(pki, "portal")
    events = _feed(victim, wire + forged + genuine) + victim.tick(10.0)
    assert _delivered(events) == [b"record 0", b"record 1", b"record 2", b"genuine 0", b"genuine 1", b"genuine 2"]
    reasons = [e.name for e in events if isinstance(e, Rejected)]
    assert reasons.count("forged") == 2  # claimed seq 4 and 5, which the publisher signed differently


def test_insider_forgery_with_unused_sequence_expires_unverified(pki):
    sender = _sender(pki, "portal", "dashboard", checkpoint_max=8)
    wire = sender.start(0.0)
    forge = _forger(pki, sender, wire)
    victim = _receiver(pki, "portal")
    events = _feed(victim, wire + [forge(999, b"bogus")], now=0.0)
    events += victim.tick(6.0)
    assert _delivered(events) == []
    assert [e.name for e in events if isinstance(e, Rejected)] == ["unverified"]


def test_rotation_by_messages_loses_nothing(pki):
    sender = _sender(pki, "portal", "central", max_messages=7, checkpoint_max=5)
    wire = sender.start(0.0) + _run(sender, 100)
    assert sender.epoch == 15
    events = _feed(_receiver(pki, "central"), wire)
    assert _delivered(events) == [b"record %d" % i for i in range(100)]
    assert len([e for e in events if isinstance(e, KeyAccepted)]) == 15


def test_rotation_by_age_and_bytes(pki):
    sender = _sender(pki, "portal", max_age=10.0, max_bytes=1000)
    sender.start(0.0)
    sender.publish(b"a" * 600, 1.0)
    assert sender.epoch == 1
    sender.publish(b"b" * 600, 2.0)  # would exceed max_bytes
    assert sender.epoch == 2 and sender.stats.last_rekey_cause == "rotation-bytes"
    assert frames.ANNOUNCEMENT in kinds(sender.actions.tick(12.5))
    assert sender.epoch == 3 and sender.stats.last_rekey_cause == "rotation-age"


def test_revocation_rekeys_and_the_revoked_reader_goes_dark(pki):
    sender = _sender(pki, "portal", "dashboard", "central", checkpoint_max=4)
    wire = sender.start(0.0) + _run(sender, 10, prefix=b"before")
    rekey = sender.readers_changed(_readers(pki, "portal", "central"), 1.0)
    assert rekey and sender.epoch == 2 and sender.stats.last_rekey_cause == "readers-changed"
    wire += rekey + _run(sender, 10, now=1.0, prefix=b"after")
    revoked = _receiver(pki, "dashboard")
    events = _feed(revoked, wire, now=1.0) + revoked.tick(10.0)
    assert _delivered(events) == [b"before %d" % i for i in range(10)]
    assert {e.name for e in events if isinstance(e, Rejected)} == {"not-a-recipient", "no-key"}
    for name in ("portal", "central"):
        assert _delivered(_feed(_receiver(pki, name), wire)) == (
            [b"before %d" % i for i in range(10)] + [b"after %d" % i for i in range(10)])
    # An unchanged set is no reason to rekey.
    assert sender.readers_changed(_readers(pki, "central", "portal"), 2.0) == []


def test_late_joiner_decrypts_after_the_next_announcement(pki):
    sender = _sender(pki, "portal", checkpoint_max=4)
    sender.start(0.0)
    _run(sender, 8)  # missed entirely
    late = _receiver(pki, "portal")
    mid = _run(sender, 3, prefix=b"mid")  # arrives before any key
    assert _delivered(_feed(late, mid, now=0.1)) == []
    events = _feed(late, sender.subscription_seen(0.2), now=0.2)
    assert _delivered(events) == [b"mid 0", b"mid 1", b"mid 2"]
    assert not [e for e in events if isinstance(e, Gap)]  # history before joining is no gap


def test_periodic_reannouncement(pki):
    sender = _sender(pki, "portal", reannounce_interval=1.0)
    sender.start(0.0)
    assert sender.tick(0.5) == []
    assert kinds(sender.actions.tick(1.0)) == [frames.ANNOUNCEMENT, frames.RUN]  # the run frame rides along
    sender.publish(b"one", 1.5)
    sender.actions.flush(1.5)
    assert kinds(sender.actions.tick(2.5)) == [frames.ANNOUNCEMENT, frames.RUN, frames.CHECKPOINT]  # and the last checkpoint


def test_loss_is_reported_as_a_gap_and_replays_are_dropped(pki):
    sender = _sender(pki, "portal", checkpoint_max=10)
    wire = sender.start(0.0) + _run(sender, 10)
    data = [m for m in wire if m[0].endswith(frames.DATA)]
    lost = [m for m in wire if m is not data[3] and m is not data[4]]
    receiver = _receiver(pki, "portal")
    events = _feed(receiver, lost)
    assert [(e.first_missing, e.count) for e in events if isinstance(e, Gap)] == [(4, 2)]
    replay = _feed(receiver, [data[0], data[6]])
    assert [e.name for e in replay] == ["replayed-sequence", "replayed-sequence"]
    assert receiver.counters["gap"] == 2


def test_publisher_restart_is_noticed(pki):
    first = _sender(pki, "portal")
    second = _sender(pki, "portal")
    receiver = _receiver(pki, "portal")
    _feed(receiver, first.start(0.0) + _run(first, 2))
    events = _feed(receiver, second.start(1.0) + _run(second, 2, prefix=b"new"))
    restarts = [e for e in events if isinstance(e, Restarted)]
    assert len(restarts) == 1 and restarts[0].old_stream_id == first.stream_id
    assert _delivered(events) == [b"new 0", b"new 1"]


def test_tampered_data_frame_fails_authentication(pki):
    sender = _sender(pki, "portal")
    wire = sender.start(0.0) + _run(sender, 1)
    topic, body = next(m for m in wire if m[0].endswith(frames.DATA))
    fields = msgpack.unpackb(body)
    for index in (2, 3):  # epoch, seq: bound as associated data
        changed = list(fields)
        changed[index] += 1
        receiver = _receiver(pki, "portal")
        events = _feed(receiver, [wire[0], [topic, msgpack.packb(changed)]]) + receiver.tick(10.0)
        # A changed epoch has no key (held, then expired); a changed sequence fails AES-GCM.
        assert [e.name for e in events if isinstance(e, Rejected)] == [["no-key"], ["decrypt-failed"]][index - 2]
    flipped = bytearray(body)
    flipped[-1] ^= 1
    events = _feed(_receiver(pki, "portal"), [wire[0], [topic, bytes(flipped)]])
    assert [e.name for e in events if isinstance(e, Rejected)] == ["decrypt-failed"]
    other_topic = frames.topic_for("other.stream", frames.DATA)
    events = _feed(_receiver(pki, "portal"), [wire[0], [other_topic, body]])
    assert _delivered(events) == []


def test_announcement_from_an_unknown_publisher_is_refused(pki, tmp_path):
    rogue = Pki.create(tmp_path, None, publisher=Role.PUBLISHER)  # same CN, another CA
    sender = WireSender("apel.jobs", rogue["publisher"], _readers(pki, "portal"))
    events = _feed(_receiver(pki, "portal"), sender.start(0.0) + _run(sender, 2))
    assert [e.name for e in events if isinstance(e, Rejected)] == ["publisher-unknown-issuer"]
    assert _delivered(events) == []


def test_announcement_signed_by_a_revoked_publisher_is_refused(tmp_path):
    own = Pki.create(tmp_path, None, publisher=Role.PUBLISHER, reader=Role.READER)
    own.ca.revoke(own.certs["publisher"].certificate)
    sender = WireSender("s", own["publisher"], ReaderSet((Reader(own.certs["reader"].certificate),)))
    receiver = StreamReceiver(own["reader"], own.trust)
    events = _feed(receiver, sender.start(0.0))
    assert [e.name for e in events] == ["publisher-revoked"]


def test_announcement_signed_with_an_expired_certificate_is_refused(tmp_path):
    import datetime as dt

    own = Pki.create(tmp_path, None, reader=Role.READER)
    now = dt.datetime.now(dt.timezone.utc)
    own.issue("publisher", Role.PUBLISHER, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    sender = WireSender("s", own["publisher"], ReaderSet((Reader(own.certs["reader"].certificate),)))
    receiver = StreamReceiver(own["reader"], own.trust)
    assert [e.name for e in _feed(receiver, sender.start(0.0))] == ["publisher-expired"]


def test_no_reader_left_suspends_publishing_and_epochs_keep_growing(pki):
    sender = _sender(pki, "portal")
    wire = sender.start(0.0) + _run(sender, 2)
    sender.readers_changed(ReaderSet(), 1.0)
    assert sender.epoch == 0 and sender.stats.readers == 0
    with pytest.raises(NoReaders):
        sender.publish(b"nobody may read this", 1.0)
    wire += sender.readers_changed(_readers(pki, "portal"), 2.0) + _run(sender, 2, prefix=b"again")
    assert sender.epoch == 2  # never epoch 1 again under this stream id
    assert _delivered(_feed(_receiver(pki, "portal"), wire)) == [b"record 0", b"record 1", b"again 0", b"again 1"]


def test_a_burst_of_subscriptions_is_coalesced_not_dropped(pki):
    sender = _sender(pki, "portal", reannounce_interval=3600.0)
    sender.start(0.0)
    assert kinds(sender.actions.subscription_seen(1.0)) == [frames.ANNOUNCEMENT, frames.RUN]
    assert sender.subscription_seen(1.01) == []  # too soon: deferred
    assert sender.next_deadline == pytest.approx(1.05)
    assert kinds(sender.actions.tick(1.06)) == [frames.ANNOUNCEMENT, frames.RUN]
    assert sender.tick(1.2) == []


def test_an_announcement_deferred_for_a_subscription_is_owed_until_it_is_out(pki):
    """What ``Publisher.wait_for_subscribers`` waits for besides the subscription: a reader that subscribed just
    after an announcement is owed the next one, and the first record must not go out before it."""
    sender = _sender(pki, "portal", reannounce_interval=3600.0)
    sender.start(0.0)
    assert not sender.announcement_owed
    assert sender.subscription_seen(0.01) == []  # within the gap after the first announcement: deferred
    assert sender.announcement_owed
    assert kinds(sender.actions.tick(0.06)) == [frames.ANNOUNCEMENT, frames.RUN]
    assert not sender.announcement_owed
