"""Nothing lost (docs/PROTOCOL.md §10): holes, resume, replay acceptance, run frames, positions and the
repairer, each machine driven alone with pinned time (no sockets, no sleeps), one behaviour per test.

A replay is simulated by feeding the receiver what a replay server would send for a range
(:meth:`RecordedRun.replay`) with ``replayed=True``, after ``expect()`` says the range was asked for, as
``zmqsec.drivers.mending`` does.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.wire import WireSender
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.events import ReceiverPolicy
from zmqsec.machines.positions import Positions
from zmqsec.machines.receiver import (
    Delivered,
    Gap,
    KeyAccepted,
    Missing,
    Rejected,
    Restarted,
    RunLinked,
    StreamReceiver,
)
from zmqsec.machines.repair import (
    CREDIT,
    GIVE_UP,
    GRANT_EVERY,
    RETRY,
    SILENCE,
    Abandon,
    Ask,
    Cancel,
    Grant,
    Repairer,
)
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol import frames
from zmqsec.protocol.checkpoint import sign_run
from zmqsec.protocol.replay import BAD_REQUEST, BUSY, UNKNOWN_RUN, End, Request

STREAM = b"apel.jobs"
REPAIR_TIMEOUT = 30.0
T0 = dt.datetime.now(dt.timezone.utc)  # signingTime of announcements, pinned per run (older runs signed earlier)


@pytest.fixture
def pki(stream_pki):
    """The session's stream PKI (tests/conftest.py): publisher, portal, dashboard, central, outsider, bridge."""
    return stream_pki


def _readers(pki, *names) -> ReaderSet:
    """A reader set of the named certificates."""
    return ReaderSet(tuple(Reader(pki[n].certificate) for n in names))


def _receiver(pki, name: str = "portal", repair_timeout: float = REPAIR_TIMEOUT) -> StreamReceiver:
    """Reader ``name``, waiting ``repair_timeout`` seconds for a hole to be repaired (0: no replay)."""
    return StreamReceiver(pki[name], pki.trust, policy=ReceiverPolicy(repair_timeout=repair_timeout))


def _feed(receiver: StreamReceiver, messages, now: float = 0.0, replayed: bool = False) -> list:
    """Every message to ``receiver`` at time ``now``; all the events, in order."""
    events = []
    for message in messages:
        events += receiver.frame_received(message, now, replayed=replayed)
    return events


def _seqs(events) -> list[int]:
    """The sequence numbers delivered, in delivery order."""
    return [e.seq for e in events if isinstance(e, Delivered)]


def _of(events, kind) -> list:
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]


def _reasons(events) -> list[str]:
    """The refusal names, in order."""
    return [e.name for e in events if isinstance(e, Rejected)]


@dataclass
class RecordedRun:
    """One publisher run as its journal holds it: every message it sent, in order.  ``live`` is what a reader
    on the stream sees, ``replay`` what a replay server sends for a range (docs/PROTOCOL.md §10.4)."""

    sender: WireSender
    wire: list[list[bytes]] = field(default_factory=list)

    @classmethod
    def publish(cls, pki, count: int, *, readers=("portal", "dashboard"), checkpoint_max: int = 3,
                previous: tuple[bytes, int] | None = None, signed_minutes: float = 0.0,
                revoke_after: int | None = None, now: float = 0.0) -> "RecordedRun":
        """A run of ``count`` records ``record <seq>``, checkpointed every ``checkpoint_max``, its announcements
        signed ``signed_minutes`` after :data:`T0`; with ``revoke_after``, every reader but the first is
        removed after that many records (a rekey: epoch 2)."""
        sender = WireSender("apel.jobs", pki["publisher"], _readers(pki, *readers),
                            RotationPolicy(checkpoint_max=checkpoint_max), previous=previous,
                            wall_clock=lambda: T0 + dt.timedelta(minutes=signed_minutes))
        run = cls(sender, sender.start(now))
        for seq in range(1, count + 1):
            run.wire += sender.publish(b"record %d" % seq, now)
            if seq == revoke_after:
                run.wire += sender.readers_changed(_readers(pki, readers[0]), now)
        run.wire += sender.flush(now)
        return run

    @property
    def id(self) -> bytes:
        """The run's stream id."""
        return self.sender.stream_id

    @property
    def last_seq(self) -> int:
        """The last sequence number sent."""
        return max(self._data())

    def _data(self) -> dict[int, list[bytes]]:
        return {frames.decode(m).seq: m for m in self.wire if m[0].endswith(b"\0" + frames.DATA)}

    def data(self, seq: int) -> list[bytes]:
        """The data frame of ``seq``."""
        return self._data()[seq]

    def of_kind(self, kind: bytes) -> list[list[bytes]]:
        """Every message of one frame kind, in order."""
        return [m for m in self.wire if m[0].endswith(b"\0" + kind)]

    def live(self, lost=(), join: int = 1) -> list[list[bytes]]:
        """What a reader on the stream receives when it joins at record ``join`` (after a re-announcement and the
        run frame) and the data frames ``lost`` never reach it."""
        data = self._data()
        start = self.wire.index(data[join])
        head = self.wire[:start] if join == 1 else [self._announcement(frames.decode(data[join]).epoch),
                                                    self.of_kind(frames.RUN)[0]]
        return [m for m in head + self.wire[start:] if not any(m is data[s] for s in lost)]

    def _announcement(self, epoch: int) -> list[bytes]:
        return next(m for m in self.of_kind(frames.ANNOUNCEMENT) if frames.decode(m).epoch == epoch)

    def replay(self, first: int, last: int = 0) -> list[list[bytes]]:
        """What a replay server sends for ``first..last`` (``last`` 0: to the end): each spanned epoch's
        announcement before its first frame, the run frame, the data frames, and the checkpoints covering
        them after the last frame each covers."""
        last = last or self.last_seq
        out, epochs = [], set()
        for m in self.wire:
            frame = frames.decode(m)
            if isinstance(frame, frames.DataFrame) and first <= frame.seq <= last:
                if frame.epoch not in epochs:
                    out.append(self._announcement(frame.epoch))
                    if not epochs:
                        out.append(self.of_kind(frames.RUN)[0])
                    epochs.add(frame.epoch)
                out.append(m)
            elif isinstance(frame, frames.Checkpoint) and frame.first_seq <= last and \
                    frame.first_seq + frame.count > first:
                out.append(m)
        return out


# -- holes: wait for the repair, then a gap ------------------------------------------------------------


def test_a_hole_holds_later_frames_and_is_reported_missing_once(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)  # five checkpoints: several releases after the hole
    receiver = _receiver(pki)
    events = _feed(receiver, run.live(lost=(4, 5)))
    assert _seqs(events) == [1, 2, 3]
    assert _of(events, Missing) == [Missing(STREAM, run.id, 4, 5)]
    assert _of(events, Gap) == []
    assert receiver.held == 5  # 6..10, waiting for the hole


def test_replayed_frames_fill_the_hole_and_everything_is_delivered_in_order(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    receiver = _receiver(pki)
    events = _feed(receiver, run.live(lost=(4, 5)))
    receiver.expect(run.id, 4)
    events += _feed(receiver, run.replay(4, 5), now=1.0, replayed=True)
    assert _seqs(events) == list(range(1, 11))
    assert [e.payload for e in _of(events, Delivered)] == [b"record %d" % s for s in range(1, 11)]
    assert _of(events, Gap) == [] and _reasons(events) == []
    assert receiver.held == 0


def test_filling_a_hole_reports_nothing_new_missing(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    receiver = _receiver(pki)
    _feed(receiver, run.live(lost=(4, 5, 6)))
    receiver.expect(run.id, 4)
    assert _of(_feed(receiver, run.replay(4, 6), now=1.0, replayed=True), Missing) == []


def test_a_hole_not_repaired_within_repair_timeout_becomes_a_gap_and_delivery_goes_on(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    receiver = _receiver(pki)
    _feed(receiver, run.live(lost=(4, 5)), now=100.0)
    waiting = receiver.tick(100.0 + REPAIR_TIMEOUT - 0.5)
    assert _seqs(waiting) == [] and _of(waiting, Gap) == []
    events = receiver.tick(100.0 + REPAIR_TIMEOUT)
    assert _of(events, Gap) == [Gap(run.id, 4, 2)]
    assert _seqs(events) == [6, 7, 8, 9, 10]
    assert receiver.counters["gap"] == 2
    # The repair comes too late: those records were reported lost, and are not delivered after their successors.
    receiver.expect(run.id, 4)
    assert _seqs(_feed(receiver, run.replay(4, 5), now=200.0, replayed=True)) == []


def test_a_lost_tail_is_asked_for_and_times_out_into_a_gap(pki):
    """The newest frames lost: only their checkpoint says they exist; nothing after them waits."""
    run = RecordedRun.publish(pki, 10, checkpoint_max=5)
    receiver = _receiver(pki)
    events = _feed(receiver, run.live(lost=(9, 10))) + receiver.tick(0.0) + receiver.tick(1.0)
    assert _seqs(events) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert _of(events, Missing) == [Missing(STREAM, run.id, 9, 10)]
    assert _of(receiver.tick(REPAIR_TIMEOUT), Gap) == [Gap(run.id, 9, 2)]


def test_give_up_reports_the_gap_at_once(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    receiver = _receiver(pki)
    _feed(receiver, run.live(lost=(4, 5)))
    receiver.give_up(run.id, 4, 5)  # no server holds 4..5
    events = receiver.tick(1.0)  # well within repair_timeout
    assert _of(events, Gap) == [Gap(run.id, 4, 2)]
    assert _seqs(events) == [6, 7, 8, 9, 10]


def test_giving_up_part_of_a_hole_keeps_waiting_for_the_rest(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    receiver = _receiver(pki)
    _feed(receiver, run.live(lost=(4, 5)))
    receiver.give_up(run.id, 4, 4)  # 4 expired everywhere; 5 is on its way
    events = receiver.tick(1.0)
    receiver.expect(run.id, 5)
    events += _feed(receiver, run.replay(5, 5), now=1.5, replayed=True)
    assert _of(events, Gap) == [Gap(run.id, 4, 1)]
    assert _seqs(events) == [5, 6, 7, 8, 9, 10]


def test_without_repair_timeout_a_hole_is_a_gap_at_once(pki):
    run = RecordedRun.publish(pki, 10, checkpoint_max=2)
    events = _feed(_receiver(pki, repair_timeout=0), run.live(lost=(4, 5)))
    assert _of(events, Gap) == [Gap(run.id, 4, 2)]
    assert _of(events, Missing) == []
    assert _seqs(events) == [1, 2, 3, 6, 7, 8, 9, 10]


# -- resume: a saved position ------------------------------------------------------------------------


def test_a_resumed_reader_reports_the_records_since_its_position_missing(pki):
    run = RecordedRun.publish(pki, 20, checkpoint_max=5)
    receiver = _receiver(pki)
    receiver.resume(STREAM, run.id, 10)
    events = _feed(receiver, run.live(join=15))
    assert _of(events, Missing) == [Missing(STREAM, run.id, 11, 14)]
    assert _seqs(events) == []


def test_a_resumed_reader_delivers_from_its_position_once_the_replay_arrives(pki):
    run = RecordedRun.publish(pki, 20, checkpoint_max=5)
    receiver = _receiver(pki)
    receiver.resume(STREAM, run.id, 10)
    events = _feed(receiver, run.live(join=15))
    receiver.expect(run.id, 11)
    events += _feed(receiver, run.replay(1), now=1.0, replayed=True)  # a server sending more than asked
    assert _seqs(events) == list(range(11, 21))
    assert set(_reasons(events)) <= {"replayed-sequence", "duplicate"}
    assert _of(events, Gap) == []


def test_a_resumed_reader_told_before_any_frame_that_its_hole_expired_reports_it_once_at_once(pki):
    """A restarted reader's first ask (what follows its position) is answered before a live frame opens the
    run: the given-up range still holds when the run's frames arrive, with no wait for repair_timeout."""
    run = RecordedRun.publish(pki, 20, checkpoint_max=5)
    receiver = _receiver(pki)
    receiver.resume(STREAM, run.id, 10)
    receiver.give_up(run.id, 11, 14)  # no server holds them any more
    events = _feed(receiver, run.live(join=15), now=0.5)
    assert _of(events, Gap) == [Gap(run.id, 11, 4)]
    assert _seqs(events) == list(range(15, 21))


def test_a_later_run_after_resume_is_read_from_its_first_record(pki):
    old = RecordedRun.publish(pki, 10)
    new = RecordedRun.publish(pki, 6, previous=(old.id, 10), signed_minutes=1)
    receiver = _receiver(pki)
    receiver.resume(STREAM, old.id, 10)
    events = _feed(receiver, new.live(join=3))
    assert _of(events, Missing) == [Missing(STREAM, new.id, 1, 2)]  # without a position it would start at 3
    receiver.expect(new.id, 1)
    events += _feed(receiver, new.replay(1, 2), now=1.0, replayed=True)
    assert _seqs(events) == [1, 2, 3, 4, 5, 6]
    assert {e.stream_id for e in _of(events, Delivered)} == {new.id}


@pytest.fixture(scope="module")
def twenty(stream_pki) -> RecordedRun:
    """A run of 20 records, checkpointed every 3, for the properties below."""
    return RecordedRun.publish(stream_pki, 20, checkpoint_max=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_replayed_and_live_frames_in_any_interleaving_deliver_every_record_once_in_order(stream_pki, twenty, data):
    """A reader resumes at ``position``, joins the live stream at ``join`` losing some of it, and replays from
    its position; whatever the order the two paths interleave, each record after the position is delivered
    exactly once, in order, and nothing is reported lost."""
    position = data.draw(st.integers(0, 15), label="position")
    join = data.draw(st.integers(position + 1, 20), label="join")
    lost = data.draw(st.sets(st.integers(join, 20), max_size=4), label="lost")
    live, replay = twenty.live(lost=lost, join=join), twenty.replay(position + 1)
    paths = data.draw(st.permutations([0] * len(live) + [1] * len(replay)), label="interleaving")
    receiver = _receiver(stream_pki)
    receiver.resume(STREAM, twenty.id, position)
    receiver.expect(twenty.id, position + 1)
    queues, events = [iter(live), iter(replay)], []
    for path in paths:
        events += receiver.frame_received(next(queues[path]), 0.0, replayed=bool(path))
    events += receiver.tick(1.0)
    assert [e.payload for e in _of(events, Delivered)] == [b"record %d" % s for s in range(position + 1, 21)]
    assert _of(events, Gap) == []
    assert set(_reasons(events)) <= {"replayed-sequence", "duplicate"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_holes_repaired_through_the_repairer_lose_nothing_whatever_the_interleaving(stream_pki, twenty, data):
    """The receiver and the repairer in a loop with a replay server that holds the whole run: whichever frames
    the live path loses, however the live frames and the replies interleave and whenever time ticks, every
    record is delivered once, in order, and no gap is reported."""
    live = twenty.live(lost=data.draw(st.sets(st.integers(2, 20), max_size=6), label="lost"))
    receiver, repairer, replies, events = _receiver(stream_pki), Repairer(1), [], []
    now = 0.0

    def act(actions) -> None:
        for action in actions:
            if isinstance(action, Ask):  # as zmqsec.drivers.mending does; the server answers in order
                request = action.request
                receiver.expect(request.run, request.first)
                replies.extend((request.id, m) for m in twenty.replay(request.first, request.last))
                replies.append((request.id, End(request.id, request.last or twenty.last_seq, 1, twenty.last_seq)))
            elif isinstance(action, Abandon):
                receiver.give_up(action.run, action.first, action.last)

    def handle(new) -> None:
        events.extend(new)
        for event in _of(new, Missing):
            act(repairer.missing(event.stream, event.stream_id, event.first, event.last, now))

    for _ in range(3):  # a lost tail is only known from its checkpoint: asked for on a tick
        handle(receiver.tick(now))
        while live or replies:
            now += 0.01
            if replies and (not live or data.draw(st.booleans(), label="reply first")):
                request_id, reply = replies.pop(0)
                if isinstance(reply, End):
                    act(repairer.end(0, request_id, reply.served_last, reply.available_first, reply.available_last,
                                     now))
                else:
                    act(repairer.frame(0, request_id, now))
                    handle(receiver.frame_received(reply, now, replayed=True))
            else:
                handle(receiver.frame_received(live.pop(0), now))
            if data.draw(st.booleans(), label="tick"):
                handle(receiver.tick(now))
    assert _seqs(events) == list(range(1, 21))
    assert _of(events, Gap) == []
    assert repairer.active == 0


# -- which replayed frames a reader accepts -----------------------------------------------------------


def _restarted(pki, receiver):
    """Run A read live up to 3 of its 6 records, then the publisher restarts as run B (records 1..2 read):
    A is retired.  Returns (A, B)."""
    a = RecordedRun.publish(pki, 6, checkpoint_max=3, signed_minutes=0)
    b = RecordedRun.publish(pki, 4, checkpoint_max=2, previous=(a.id, 6), signed_minutes=10)
    _feed(receiver, a.live(lost=(4, 5, 6)))
    events = _feed(receiver, b.wire[:b.wire.index(b.data(3))], now=1.0)
    assert [(e.old_stream_id, e.new_stream_id) for e in _of(events, Restarted)] == [(a.id, b.id)]
    return a, b


def test_a_replay_nobody_asked_for_of_a_retired_run_is_refused(pki):
    receiver = _receiver(pki)
    a, _ = _restarted(pki, receiver)
    events = _feed(receiver, a.replay(4), now=2.0, replayed=True)  # no expect()
    assert _seqs(events) == []
    assert receiver.counters["replay-unasked"] == len(a.replay(4))  # dropped unread, counted


def test_a_replay_nobody_asked_for_of_an_unknown_run_is_refused(pki):
    other = RecordedRun.publish(pki, 3)
    receiver = _receiver(pki)
    events = _feed(receiver, other.replay(1), replayed=True)  # no expect(): a server injecting a run
    assert _seqs(events) == []


def test_an_asked_for_replay_of_a_retired_run_is_delivered_and_does_not_become_live(pki):
    receiver = _receiver(pki)
    a, b = _restarted(pki, receiver)
    receiver.expect(a.id, 4)
    events = _feed(receiver, a.replay(4), now=2.0, replayed=True)
    assert [(e.stream_id, e.seq) for e in _of(events, Delivered)] == [(a.id, 4), (a.id, 5), (a.id, 6)]
    events += _feed(receiver, b.wire[b.wire.index(b.data(3)):], now=3.0)  # the live run goes on
    assert [(e.stream_id, e.seq) for e in _of(events, Delivered)][3:] == [(b.id, 3), (b.id, 4)]
    assert _of(events, Restarted) == [] and _reasons(events) == []


def test_an_earlier_runs_announcement_on_the_live_path_is_still_refused_after_its_repair(pki):
    receiver = _receiver(pki)
    a, b = _restarted(pki, receiver)
    receiver.expect(a.id, 4)
    _feed(receiver, a.replay(4), now=2.0, replayed=True)
    events = _feed(receiver, a.of_kind(frames.ANNOUNCEMENT) + [a.data(6)], now=3.0)  # A again, not replayed
    assert _reasons(events) and set(_reasons(events)) <= {"retired-stream", "stale-restart"}
    assert _of(events, Restarted) == [] and _seqs(events) == []
    live = _feed(receiver, b.wire[b.wire.index(b.data(3)):], now=4.0)  # the live run goes on
    assert [(e.stream_id, e.seq) for e in _of(live, Delivered)] == [(b.id, 3), (b.id, 4)]


def test_a_run_first_met_by_replay_then_live_is_the_live_run(pki):
    a = RecordedRun.publish(pki, 10, checkpoint_max=5, signed_minutes=0)
    b = RecordedRun.publish(pki, 2, previous=(a.id, 10), signed_minutes=10)
    receiver = _receiver(pki)
    receiver.resume(STREAM, a.id, 3)
    receiver.expect(a.id, 4)
    events = _feed(receiver, a.replay(4, 5), replayed=True)  # the replay answers before the stream does
    events += _feed(receiver, a.live(join=6), now=1.0)
    assert _seqs(events) == [4, 5, 6, 7, 8, 9, 10]
    restart = _feed(receiver, b.wire, now=2.0)
    assert [(e.old_stream_id, e.new_stream_id) for e in _of(restart, Restarted)] == [(a.id, b.id)]


# -- revocation: replay is ciphertext -------------------------------------------------------------------


@pytest.mark.parametrize(("reader", "reads"), [("dashboard", False), ("portal", True)],
                         ids=["revoked-reads-nothing", "authorized-reads-all"])
def test_a_replay_after_a_revocation_is_read_only_by_readers_authorized_at_its_epoch(pki, reader, reads):
    run = RecordedRun.publish(pki, 10, readers=("portal", "dashboard"), checkpoint_max=5, revoke_after=5)
    receiver = _receiver(pki, reader)
    receiver.resume(STREAM, run.id, 5)  # both read 1..5 before dashboard was removed
    receiver.expect(run.id, 6)
    events = _feed(receiver, run.replay(6), now=1.0, replayed=True) + receiver.tick(10.0)
    if reads:
        assert _seqs(events) == [6, 7, 8, 9, 10] and _reasons(events) == []
    else:
        assert _seqs(events) == []
        assert _reasons(events) == ["not-a-recipient"] + ["no-key"] * 5


# -- run frames ---------------------------------------------------------------------------------------


def test_a_run_frame_is_accepted_once_its_publisher_is_known_and_names_the_previous_run(pki):
    old_run = bytes(range(16))
    run = RecordedRun.publish(pki, 1, previous=(old_run, 7))
    announcement, run_frame = run.of_kind(frames.ANNOUNCEMENT)[0], run.of_kind(frames.RUN)[0]
    receiver = _receiver(pki)
    assert receiver.frame_received(run_frame, 0.0) == []  # publisher unknown: ignored
    assert _of(receiver.frame_received(announcement, 0.0), KeyAccepted)
    assert receiver.frame_received(run_frame, 0.1) == [RunLinked(STREAM, run.id, old_run, 7)]
    assert receiver.frame_received(run_frame, 0.2) == []  # the periodic copy: linked once


def test_a_run_frame_signed_by_another_key_is_refused_bad_run(pki):
    run = RecordedRun.publish(pki, 1, previous=(bytes(16), 7))
    forged = frames.encode(sign_run(STREAM, run.id, bytes(range(16)), 99, pki["bridge"].key))
    receiver = _receiver(pki)
    _feed(receiver, run.of_kind(frames.ANNOUNCEMENT))
    assert _reasons(receiver.frame_received(forged, 0.0)) == ["bad-run"]
    assert receiver.frame_received(run.of_kind(frames.RUN)[0], 0.0) == [RunLinked(STREAM, run.id, bytes(16), 7)]


# -- positions ----------------------------------------------------------------------------------------

R1, R2, R3 = (bytes([n]) * 16 for n in (1, 2, 3))


def test_positions_follow_the_run_stored_last():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    positions.stored(STREAM, R1, 4)  # never backwards
    assert positions.resume() == [(STREAM, R1, 5)]
    positions.stored(STREAM, R2, 1)
    assert positions.resume() == [(STREAM, R2, 1)]


def test_an_earlier_run_being_completed_never_becomes_current():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    positions.stored(STREAM, R2, 1)
    assert positions.linked(STREAM, R2, R1, 10) == [(STREAM, R1, 6, 10)]
    positions.stored(STREAM, R1, 6)
    assert positions.resume() == [(STREAM, R2, 1)]
    positions.stored(STREAM, R1, 10)  # R1 complete: forgotten
    assert positions.repairs() == [(STREAM, R2, 2, 0)]


def test_positions_ask_after_a_restart_for_everything_not_stored():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    assert positions.repairs() == [(STREAM, R1, 6, 0)]  # to the end, wherever that is
    positions.stored(STREAM, R2, 3)
    positions.linked(STREAM, R2, R1, 10)
    assert sorted(positions.repairs()) == [(STREAM, R1, 6, 10), (STREAM, R2, 4, 0)]


def test_a_run_frame_asks_for_the_tail_of_the_run_being_read_and_the_new_run_from_its_start():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    assert positions.linked(STREAM, R2, R1, 10) == [(STREAM, R1, 6, 10), (STREAM, R2, 1, 0)]
    # again until stored (the Repairer dedups)
    assert positions.linked(STREAM, R2, R1, 10) == [(STREAM, R1, 6, 10), (STREAM, R2, 1, 0)]
    positions.stored(STREAM, R2, 1)
    assert positions.linked(STREAM, R2, R1, 10) == [(STREAM, R1, 6, 10)]  # R2 is being read from its start


def test_a_run_frame_asks_only_for_the_new_run_when_the_previous_was_read_to_its_end():
    # What a restarted publisher sent before this reader reconnected, or while it was away, and nothing
    # live has followed yet to show the hole.
    positions = Positions()
    positions.stored(STREAM, R1, 10)
    assert positions.linked(STREAM, R2, R1, 10) == [(STREAM, R2, 1, 0)]
    positions.stored(STREAM, R2, 3)
    assert positions.linked(STREAM, R2, R1, 10) == []


def test_a_run_frame_asks_for_all_of_an_intermediate_run_never_met():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    # R2's own run frame will name R1
    assert positions.linked(STREAM, R3, R2, 8) == [(STREAM, R2, 1, 8), (STREAM, R3, 1, 0)]


def test_a_run_frame_asks_nothing_of_a_reader_without_history():
    positions = Positions()
    assert positions.linked(STREAM, R2, R1, 10) == []
    assert positions.repairs() == []


def test_positions_survive_a_snapshot_round_trip():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    positions.stored(STREAM, R2, 3)
    positions.linked(STREAM, R2, R1, 10)
    positions.stored(b"other.stream", R3, 42)
    restored = Positions.from_snapshot(json.loads(json.dumps(positions.snapshot())))
    assert restored.snapshot() == positions.snapshot()
    assert sorted(restored.resume()) == sorted(positions.resume())
    assert sorted(restored.repairs()) == sorted(positions.repairs())


def test_adopt_counts_records_found_in_the_spool_as_stored():
    positions = Positions()
    positions.stored(STREAM, R1, 5)
    positions.adopt(STREAM, [f"{R1.hex()}-7", f"{R1.hex()}-6", f"{R1.hex()}-3", "not-an-empaid", "abcd-9",
                             f"{R1.hex()}-x"])
    assert positions.resume() == [(STREAM, R1, 7)]
    positions.adopt(STREAM, [f"{R2.hex()}-2"])  # a later run's records: that is where the reader was
    assert positions.resume() == [(STREAM, R2, 2)]


# -- the repairer -------------------------------------------------------------------------------------

RUN = bytes(range(16))


def _request(request_id: int, first: int, last: int) -> Request:
    """The request the repairer sends for ``first..last`` of :data:`RUN`."""
    return Request(request_id, STREAM, RUN, first, last, b"", CREDIT)


def test_the_repairer_asks_the_first_server_first():
    repairer = Repairer(3)
    assert repairer.missing(STREAM, RUN, 4, 9, 0.0) == [Ask(0, _request(1, 4, 9))]
    assert repairer.active == 1


def test_without_servers_a_missing_range_is_abandoned_at_once():
    assert Repairer(0).missing(STREAM, RUN, 4, 9, 0.0) == [Abandon(STREAM, RUN, 4, 9)]


@pytest.mark.parametrize("reason", [UNKNOWN_RUN, BAD_REQUEST])
def test_an_error_hands_the_range_to_the_next_server(reason):
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.error(0, 1, reason, 1.0) == [Cancel(0, 1), Ask(1, _request(2, 4, 9))]
    assert repairer.error(1, 2, reason, 2.0) == [Cancel(1, 2), Abandon(STREAM, RUN, 4, 9)]
    assert repairer.active == 0


def test_a_busy_server_is_asked_again_after_retry():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.error(0, 1, BUSY, 1.0) == []
    assert repairer.tick(1.0 + RETRY - 0.01) == []
    assert repairer.tick(1.0 + RETRY) == [Ask(0, _request(2, 4, 9))]  # the same server


def test_a_silent_server_hands_the_range_to_the_next():
    """Silence is no answer (a server may be restarting): the next server is asked, then the list again from
    the first after RETRY, and only GIVE_UP seconds of silence abandon the range."""
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.tick(SILENCE - 0.01) == []
    assert repairer.tick(SILENCE) == [Cancel(0, 1), Ask(1, _request(2, 4, 9))]
    assert repairer.tick(2 * SILENCE) == [Cancel(1, 2)]  # round the list again, not at once
    assert repairer.tick(2 * SILENCE + RETRY) == [Ask(0, _request(4, 4, 9))]
    now, out = 2 * SILENCE + RETRY, []
    while now < GIVE_UP + SILENCE + RETRY and not out:
        now += SILENCE
        out = [a for a in repairer.tick(now) if isinstance(a, Abandon)]
    assert out == [Abandon(STREAM, RUN, 4, 9)] and now >= GIVE_UP


def test_an_open_ended_ask_nobody_answers_is_dropped_not_reported_lost():
    """What may follow a position (``last`` 0) is not known to exist: servers silent or refusing until GIVE_UP
    end the ask without an unrecoverable gap."""
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 0, 0.0)
    now, out = 0.0, []
    while now < GIVE_UP + 2 * SILENCE:
        now += SILENCE
        out += repairer.tick(now)
    assert not [a for a in out if isinstance(a, Abandon)] and repairer.active == 0
    (ask,) = repairer.missing(STREAM, RUN, 4, 0, now)
    (_, again) = repairer.error(0, ask.request.id, UNKNOWN_RUN, now)  # cancel that one, ask the next server
    out = repairer.error(1, again.request.id, UNKNOWN_RUN, now)
    assert not [a for a in out if isinstance(a, Abandon)] and repairer.active == 0


def test_frames_keep_a_slow_server_from_counting_as_silent():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    repairer.frame(0, 1, SILENCE - 1)
    assert repairer.tick(SILENCE) == []


def test_an_expired_range_goes_to_the_next_server_then_is_abandoned():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    out = repairer.end(0, 1, 9, 6, 100, 1.0)  # 4..5 expired from server 0's journal; it served 6..9
    assert out[0] == Ask(1, _request(2, 4, 5))
    out = repairer.end(1, 2, 3, 7, 100, 2.0)  # server 1 lost them too
    assert out == [Abandon(STREAM, RUN, 4, 5)]


def test_what_a_server_served_beside_an_expired_part_is_not_asked_again():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.end(0, 1, 9, 6, 100, 1.0) == [Ask(1, _request(2, 4, 5))]


def test_a_partly_served_range_is_asked_again_from_where_the_server_stopped():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 200_000, 0.0)
    assert repairer.end(0, 1, 100_003, 1, 300_000, 1.0) == [Ask(0, _request(2, 100_004, 200_000))]
    assert repairer.end(0, 2, 200_000, 1, 300_000, 2.0) == []
    assert repairer.active == 0


@pytest.mark.parametrize("served_last", [5, 12], ids=["nothing-more", "served-to-the-end"])
def test_an_open_ended_request_is_done_when_the_server_holds_nothing_more(served_last):
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 6, 0, 0.0)
    assert repairer.end(0, 1, served_last, 1, served_last, 1.0) == []  # no Abandon: nothing is missing
    assert repairer.active == 0


def test_a_hole_found_while_an_open_ended_ask_is_in_flight_is_asked_again_until_a_server_has_it():
    """A restarted reader asks for whatever follows its position; live frames then show a hole inside that
    ask.  A server that has not committed the hole yet ends the ask with nothing: the hole is asked again."""
    repairer = Repairer(1)
    repairer.missing(STREAM, RUN, 11, 0, 0.0)
    assert repairer.missing(STREAM, RUN, 11, 110, 0.1) == []  # being fetched already
    assert repairer.end(0, 1, 10, 1, 10, 0.2) == []  # nothing beyond 10 committed yet
    assert repairer.active == 1
    assert repairer.tick(0.2 + RETRY) == [Ask(0, _request(2, 11, 110))]


def test_a_hole_found_while_an_open_ended_ask_is_in_flight_is_abandoned_when_it_expired():
    repairer = Repairer(1)
    repairer.missing(STREAM, RUN, 11, 0, 0.0)
    repairer.missing(STREAM, RUN, 11, 110, 0.1)
    out = repairer.end(0, 1, 10, 111, 110, 0.2)  # the journal holds none of the run: all of it expired
    assert [a for a in out if isinstance(a, Abandon)] == [Abandon(STREAM, RUN, 11, 110)]
    (again,) = [a for a in out if isinstance(a, Ask)]  # what follows the expired part
    assert repairer.end(0, again.request.id, 110, 111, 110, 0.3) == [] and repairer.active == 0


def test_an_expired_range_is_reported_once_however_often_what_follows_a_position_is_asked():
    """A silent link makes a reader ask every 5 s for what follows its position; a range that expired there
    is one unrecoverable gap, not one per ask."""
    repairer, abandoned = Repairer(1), []
    for n in range(3):
        (ask,) = repairer.missing(STREAM, RUN, 11, 0, 5.0 * n)
        out = repairer.end(0, ask.request.id, ask.request.first - 1, 111, 110, 5.0 * n + 0.1)
        abandoned += [a for a in out if isinstance(a, Abandon)]
        for follow in (a for a in out if isinstance(a, Ask)):
            repairer.end(0, follow.request.id, 110, 111, 110, 5.0 * n + 0.2)
    assert abandoned == [Abandon(STREAM, RUN, 11, 110)] and repairer.active == 0


def test_credit_is_granted_as_replayed_frames_are_consumed():
    repairer = Repairer(1)
    repairer.missing(STREAM, RUN, 1, 2000, 0.0)
    grants = [action for n in range(3 * GRANT_EVERY) for action in repairer.frame(0, 1, 0.001 * n)]
    assert grants == [Grant(0, 1, GRANT_EVERY)] * 3
    assert repairer.frame(1, 1, 1.0) == [] and repairer.frame(0, 99, 1.0) == []  # not ours: ignored


def test_a_range_in_flight_is_not_asked_twice():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.missing(STREAM, RUN, 4, 9, 0.1) == []
    assert repairer.missing(STREAM, RUN, 5, 7, 0.2) == []
    assert repairer.active == 1


def test_a_hole_that_grows_is_asked_for_by_the_next_request():
    repairer = Repairer(2)
    repairer.missing(STREAM, RUN, 4, 9, 0.0)
    assert repairer.missing(STREAM, RUN, 4, 12, 0.1) == []
    assert repairer.end(0, 1, 9, 1, 100, 1.0) == [Ask(0, _request(2, 10, 12))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["end", "error", "tick", "missing"]), st.integers(0, 30),
                          st.integers(0, 30)), max_size=25))
def test_the_repairer_asks_only_for_what_was_missing_and_never_gets_stuck(script):
    """Whatever the servers answer, in whatever order, every request and every abandon stays inside what the
    receiver reported missing; and once the servers fall silent, every range ends (served or abandoned)."""
    repairer, wanted, now, asks = Repairer(3), set(), 0.0, {}

    def check(actions) -> None:
        for action in actions:
            if isinstance(action, Ask):
                asks[action.request.id] = action
                first, last = action.request.first, action.request.last
            elif isinstance(action, Abandon):
                first, last = action.first, action.last
            else:
                continue
            assert set(range(first, last + 1)) <= wanted, (action, sorted(wanted))

    for step, a, b in script:
        now += 1.0
        if step == "missing":
            first, last = sorted((a + 1, b + 1))
            wanted |= set(range(first, last + 1))
            check(repairer.missing(STREAM, RUN, first, last, now))
        elif step == "tick":
            now += a
            check(repairer.tick(now))
        elif asks:
            request_id = sorted(asks)[a % len(asks)]
            server = asks[request_id].server
            check(repairer.end(server, request_id, b, a, a + b, now) if step == "end"
                  else repairer.error(server, request_id, [BUSY, UNKNOWN_RUN][b % 2], now))
    for _ in range(200):  # silence from here on: every range ends by GIVE_UP at the latest
        now += SILENCE + RETRY
        check(repairer.tick(now))
    assert repairer.active == 0


# -- the ends of a run: its first checkpoint and its tail -------------------------------------------------


def test_a_reader_without_a_position_that_loses_the_first_checkpoint_waits_for_the_frames_it_covered(pki):
    run = RecordedRun.publish(pki, 9, checkpoint_max=3)
    first = run.of_kind(frames.CHECKPOINT)[0]
    receiver = _receiver(pki)
    events = _feed(receiver, [m for m in run.live() if m is not first])
    assert _seqs(events) == []  # 1..3 arrived but nothing vouches for them yet: 4..9 wait behind them
    assert _of(events, Missing) == [Missing(STREAM, run.id, 1, 3)]
    receiver.expect(run.id, 1)
    events = _feed(receiver, run.replay(1, 3), now=1.0, replayed=True)
    assert _seqs(events) == list(range(1, 10)) and _reasons(events) == []


def test_a_reader_without_a_position_and_without_replay_reports_the_unvouched_start_as_a_gap_after_the_hold_timeout(pki):
    run = RecordedRun.publish(pki, 9, checkpoint_max=3)
    first = run.of_kind(frames.CHECKPOINT)[0]
    receiver = _receiver(pki, repair_timeout=0)
    events = _feed(receiver, [m for m in run.live() if m is not first])
    assert _seqs(events) == []  # 1..3 may still be vouched for by a late checkpoint: 4..9 wait behind them
    events = receiver.tick(receiver.policy.hold_timeout)
    assert _reasons(events) == ["unverified"] * 3 and _seqs(events) == list(range(4, 10))
    assert [(e.first_missing, e.count) for e in _of(events, Gap)] == [(1, 3)]


def test_the_last_checkpoint_rides_along_the_periodic_reannouncement_so_a_lost_tail_is_noticed_on_an_idle_stream(pki):
    run = RecordedRun.publish(pki, 9, checkpoint_max=3)
    receiver = _receiver(pki)
    tail = run.wire.index(run.data(7))
    assert _seqs(_feed(receiver, run.wire[:tail])) == list(range(1, 7))  # 7..9 and their checkpoint: lost
    resent = run.sender.actions.tick(10.0)  # idle: only the periodic re-announcement
    assert [a.kind for a in resent] == [frames.ANNOUNCEMENT, frames.RUN, frames.CHECKPOINT]
    assert resent[-1].again and resent[-1].parts == run.of_kind(frames.CHECKPOINT)[-1]
    events = _feed(receiver, [a.parts for a in resent], now=10.0)
    assert _of(events, Missing) == [Missing(STREAM, run.id, 7, 9)]
    receiver.expect(run.id, 7)
    assert _seqs(_feed(receiver, run.replay(7), now=11.0, replayed=True)) == [7, 8, 9]


def test_the_live_copy_of_a_frame_a_repair_delivered_first_is_dropped_silently(pki):
    run = RecordedRun.publish(pki, 9, checkpoint_max=3)
    receiver = _receiver(pki)
    live = run.live(lost=(4, 5, 6, 7, 8, 9))
    _feed(receiver, live[:live.index(run.data(3)) + 1] + run.of_kind(frames.CHECKPOINT)[:1])
    receiver.expect(run.id, 4)
    assert _seqs(_feed(receiver, run.replay(4), now=1.0, replayed=True)) == [4, 5, 6, 7, 8, 9]
    late = _feed(receiver, [run.data(5), run.data(9)], now=2.0)  # the live stream, behind the repair
    assert late == []
    # An old frame nobody asked for is still refused as a replay.
    assert _reasons(_feed(receiver, [run.data(2)], now=3.0)) == ["replayed-sequence"]


def test_the_live_copy_of_a_frame_a_repair_brought_first_and_still_held_is_dropped_silently(pki):
    run = RecordedRun.publish(pki, 9, checkpoint_max=3)
    receiver = _receiver(pki)
    live = run.live(lost=(4, 5, 6))
    _feed(receiver, live[:live.index(run.data(3)) + 1] + run.of_kind(frames.CHECKPOINT)[:1])
    receiver.expect(run.id, 4)
    replayed = [m for m in run.replay(4) if m is not run.of_kind(frames.CHECKPOINT)[-1]]  # 7..9 not vouched yet
    _feed(receiver, replayed, now=1.0, replayed=True)
    assert _feed(receiver, [run.data(8)], now=1.5) == []  # live, behind the repair: held already, no refusal
    assert _seqs(_feed(receiver, run.of_kind(frames.CHECKPOINT)[-1:], now=2.0)) == [7, 8, 9]


def test_a_second_hole_long_after_a_repaired_one_is_waited_for_in_its_own_right(pki):
    """A repaired hole is closed once it is filled, even while later frames are still held: a hole that opens
    more than ``repair_timeout`` later is repaired, not reported as a gap at once."""
    run = RecordedRun.publish(pki, 18, checkpoint_max=3)
    c = run.of_kind(frames.CHECKPOINT)  # c[i] vouches for 3i+1 .. 3i+3
    receiver = _receiver(pki)
    head = run.wire[:run.wire.index(run.data(1))]
    events = _feed(receiver, head + [run.data(s) for s in (1, 2, 3)] + [c[0]] + [run.data(s) for s in (7, 8, 9)]
                   + [c[2], run.data(10)], now=0.0)  # 4..6 lost; 10 held: the stream never runs dry
    assert _of(events, Missing) == [Missing(STREAM, run.id, 4, 6)]
    receiver.expect(run.id, 4)
    assert _seqs(_feed(receiver, run.replay(4, 6), now=1.0, replayed=True)) == [4, 5, 6, 7, 8, 9]
    # 13..15 lost; 16 arrives before the checkpoint of 10..12, so frames are held throughout.
    later = 1.0 + REPAIR_TIMEOUT + 10
    events = _feed(receiver, [run.data(11), run.data(12), run.data(16), c[3], run.data(17), run.data(18), c[5]],
                   now=later)
    assert _seqs(events) == [10, 11, 12]
    assert _of(events, Gap) == [] and _of(events, Missing) == [Missing(STREAM, run.id, 13, 15)]
    assert _seqs(_feed(receiver, run.replay(13, 15), now=later + 1, replayed=True)) == list(range(13, 19))
