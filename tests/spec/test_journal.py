"""The publisher's journal (docs/PROTOCOL.md §10.3), on real SQLite files: what is committed is served byte for
byte and found by what replay looks it up by; what was never committed, cut short by kill -9, torn off the
write-ahead log or damaged on disk is never served; retention drops the old and gives the space back; and a
full filesystem stops the commit (and the checkpoints behind it) without losing what was committed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit import mounts
from kit.wire import WireSender
from zmqsec.drivers.journal import DATABASE, Journal, JournalFull, JournalReader, RunInfo, frame_digest
from zmqsec.drivers.recorder import Recorder
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.sender import RotationPolicy, Send
from zmqsec.protocol import frames

STREAM = b"apel.jobs"
OTHER_RUN = bytes(16)


# -- a real stream, journaled as the publisher journals it ----------------------------------------

def _sender(pki, **policy) -> WireSender:
    """A sender of apel.jobs for portal, dashboard and central, with ``policy``."""
    readers = ReaderSet(tuple(Reader(pki[n].certificate) for n in ("portal", "dashboard", "central")))
    return WireSender("apel.jobs", pki["publisher"], readers, RotationPolicy(**policy))


def _stream(sender: WireSender, records: int, *, payload: int = 0, now: float = 0.0) -> list[Send]:
    """The sender's typed actions for its start (if not started yet), ``records`` records and a final checkpoint;
    each record is ``record N`` padded to ``payload`` bytes."""
    s = sender.actions
    out = s.start(now) if s.epoch == 0 else []
    first = s.stats.sent
    for i in range(first, first + records):
        out += s.publish((b"record %d " % i).ljust(payload, b"."), now)
    out += s.flush(now)
    return [a for a in out if isinstance(a, Send)]


def _record(recorder: Recorder, sends: list[Send], stream_id: bytes) -> None:
    """Feed ``sends`` to ``recorder`` by kind, as the publisher driver does, then commit (as its flush at the end
    of a spool batch does, whatever the group commit's timer says)."""
    for a in sends:
        if a.kind == frames.DATA:
            recorder.data(a.parts, stream_id, a.seq, a.epoch)
        elif a.kind == frames.CHECKPOINT:
            recorder.checkpoint(a.parts)
        else:
            recorder.control(a.parts)
    recorder.commit()


def _journaled(directory, sender: WireSender, sends: list[Send], **options) -> Journal:
    """A journal in ``directory`` holding ``sends`` (the run opened first), committed as the publisher commits."""
    journal = Journal(directory, **options)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal)
    _record(recorder, sends, sender.stream_id)
    assert recorder.commit() and journal.pending == 0
    return journal


def _of(sends: list[Send], kind: bytes) -> list[Send]:
    """The frames of ``kind`` among ``sends``, in order."""
    return [a for a in sends if a.kind == kind]


def _checkpoint_rows(sends: list[Send]) -> list[tuple[int, int, bytes, bytes]]:
    """(first, last, topic, body) of every checkpoint among ``sends``, from its decoded frame."""
    rows = []
    for a in _of(sends, frames.CHECKPOINT):
        c = frames.decode(a.parts)
        rows.append((c.first_seq, c.first_seq + c.count - 1, a.parts[0], a.parts[1]))
    return rows


def _served_seqs(directory, stream_id: bytes) -> list[int]:
    """The data frames a fresh reader of ``directory`` serves, by sequence number."""
    reader = JournalReader(directory)
    try:
        return [row[0] for row in reader.data(stream_id, 1, 2**62, 10**9)]
    finally:
        reader.close()


@pytest.fixture
def pki(stream_pki):
    """The session's stream PKI (tests/conftest.py): publisher, portal, dashboard, central."""
    return stream_pki


# -- what is committed is served, byte for byte ---------------------------------------------------

def test_committed_frames_are_read_back_byte_for_byte(pki, tmp_path):
    sender = _sender(pki, group_size=1, checkpoint_max=4)
    sends = _stream(sender, 10)
    sid = sender.stream_id
    _journaled(tmp_path, sender, sends).close()
    reader = JournalReader(tmp_path)

    data = [(a.seq, a.epoch, a.parts[0], a.parts[1]) for a in _of(sends, frames.DATA)]
    assert reader.data(sid, 1, 10, 100) == data
    assert reader.checkpoints(sid, 1, 10) == _checkpoint_rows(sends)
    (k,), (r,) = _of(sends, frames.ANNOUNCEMENT), _of(sends, frames.RUN)
    groups = [frames.decode(a.parts) for a in _of(sends, frames.GROUP)]
    assert groups  # three readers in groups of about one (tags may collide: one group or more)
    kek_ids = [g.tag + b".%d" % g.generation for g in groups]
    keks, topic, body = reader.announcement(sid, 1)
    assert (topic, body) == tuple(k.parts)
    assert sorted(keks.split(b"\0")) == sorted(kek_ids)  # the group keys the epoch key is wrapped under
    expected_groups = sorted((i, *a.parts) for i, a in zip(kek_ids, _of(sends, frames.GROUP)))
    assert sorted(reader.group_announcements(sid, kek_ids)) == expected_groups
    assert reader.run_frame(sid) == tuple(r.parts)
    assert reader.run(STREAM, sid) == RunInfo(STREAM, sid, b"", 0, 10, 1, 10)
    assert reader.damaged == 0


def test_lookups_by_run_and_range(pki, tmp_path):
    sender = _sender(pki, group_size=1, checkpoint_max=4)
    sends = _stream(sender, 10)  # checkpoints cover 1-4, 5-8, 9-10
    sid = sender.stream_id
    _journaled(tmp_path, sender, sends).close()
    reader = JournalReader(tmp_path)

    assert [row[0] for row in reader.data(sid, 4, 7, 100)] == [4, 5, 6, 7]
    assert [row[0] for row in reader.data(sid, 4, 7, 2)] == [4, 5]
    assert [row[0] for row in reader.data(sid, 10, 10**9, 100)] == [10]
    assert reader.data(sid, 11, 20, 100) == [] and reader.data(OTHER_RUN, 1, 10, 100) == []
    assert [row[:2] for row in reader.checkpoints(sid, 4, 5)] == [(1, 4), (5, 8)]
    assert [row[:2] for row in reader.checkpoints(sid, 9, 9)] == [(9, 10)]
    assert [row[:2] for row in reader.checkpoints(sid, 8, 9)] == [(5, 8), (9, 10)]
    assert reader.checkpoints(sid, 11, 12) == [] and reader.checkpoints(OTHER_RUN, 1, 10) == []
    assert reader.announcement(sid, 2) is None and reader.announcement(OTHER_RUN, 1) is None
    assert reader.group_announcements(sid, [b"0.9"]) == [] and reader.group_announcements(sid, []) == []
    assert reader.run_frame(OTHER_RUN) is None
    assert reader.run(STREAM, OTHER_RUN) is None
    assert reader.run(b"apel.other", sid) is None  # a run is looked up under its own stream name only


def test_periodic_reannouncements_and_duplicates_are_stored_once(pki, tmp_path):
    sender = _sender(pki, group_size=1, checkpoint_max=4, reannounce_interval=1.0, group_reannounce_interval=1.0)
    sends = _stream(sender, 5)
    for now in (2.0, 4.0, 6.0):  # three periodic re-announcements: the same bytes again
        sends += [a for a in sender.actions.tick(now) if isinstance(a, Send)]
    k = _of(sends, frames.ANNOUNCEMENT)
    assert len(k) == 4 and all(a.parts == k[0].parts for a in k)
    groups = len({bytes(a.parts[0]) for a in _of(sends, frames.GROUP)})
    assert len(_of(sends, frames.RUN)) == 4 and len(_of(sends, frames.GROUP)) == 4 * groups
    sends += _of(sends, frames.DATA)[:2]  # a relay that saw two data frames twice
    journal = _journaled(tmp_path, sender, sends)
    distinct = {(bytes(a.parts[0]), bytes(a.parts[1])) for a in sends}
    assert journal.count() == len(distinct) == groups + 1 + 1 + 5 + 2  # G, K, R, D, S
    assert [row[0] for row in JournalReader(tmp_path).data(sender.stream_id, 1, 10, 100)] == [1, 2, 3, 4, 5]


# -- runs: a restarted publisher learns the previous run --------------------------------------------

def test_a_restarted_publisher_finds_the_previous_run_and_its_last_committed_seq(pki, tmp_path):
    first = _sender(pki, checkpoint_max=4)
    journal = Journal(tmp_path)
    assert journal.last_run(STREAM) is None
    journal.open_run(STREAM, first.stream_id, None)
    assert journal.last_run(STREAM) == (first.stream_id, 0)
    recorder = Recorder(lambda parts: None, journal)
    _record(recorder, _stream(first, 7), first.stream_id)
    recorder.commit()
    for a in _of(_stream(first, 3), frames.DATA):  # 8..10 sent, never committed: killed before the checkpoint
        recorder.data(a.parts, first.stream_id, a.seq, a.epoch)
    journal.close()

    journal = Journal(tmp_path)  # the restart
    assert journal.last_run(STREAM) == (first.stream_id, 7)
    assert journal.last_run(b"apel.other") is None
    second = _sender(pki)
    journal.open_run(STREAM, second.stream_id, journal.last_run(STREAM))
    assert journal.last_run(STREAM) == (second.stream_id, 0)
    info = JournalReader(tmp_path).run(STREAM, second.stream_id)
    assert (info.previous, info.previous_last, info.last_seq) == (first.stream_id, 7, 0)
    assert JournalReader(tmp_path).run(STREAM, first.stream_id).last_seq == 7


# -- spool items ---------------------------------------------------------------------------------

def test_a_committed_spool_item_is_known_as_published(pki, tmp_path):
    sender = _sender(pki, checkpoint_max=4)
    journal = Journal(tmp_path)
    journal.open_run(STREAM, sender.stream_id, None)
    sends = _stream(sender, 2)
    for a in sends:
        journal.add_parts(a.parts)
    journal.spooled("0001.msg", b"\x01" * 32, sender.stream_id, 1)
    journal.spooled("0002.msg", b"\x02" * 32, sender.stream_id, 2)
    assert not journal.published("0001.msg", b"\x01" * 32)  # not before the commit
    journal.commit()
    assert journal.published("0001.msg", b"\x01" * 32) and journal.published("0002.msg", b"\x02" * 32)
    assert not journal.published("0001.msg", b"\x02" * 32)  # same name, other content: another item
    assert not journal.published("0003.msg", b"\x01" * 32)
    journal.close()
    assert Journal(tmp_path).published("0002.msg", b"\x02" * 32)  # durable across a restart


# -- kill -9 and torn tails ------------------------------------------------------------------------

_WRITER = r'''
"""A journal writer for test_journal.py: commits batch 0, then meets its end as argv[3] says."""
import json, os, signal, sys
from zmqsec.drivers.journal import Journal
directory, plan_path, mode = sys.argv[1:4]
plan = json.load(open(plan_path))
sid = bytes.fromhex(plan["stream_id"])
journal = Journal(directory)
journal.open_run(plan["stream"].encode(), sid, None)

def add(i):
    for topic, body in plan["batches"][i]:
        journal.add_parts([bytes.fromhex(topic), bytes.fromhex(body)])
    for name, digest, seq in plan["spooled"][i]:
        journal.spooled(name, bytes.fromhex(digest), sid, seq)

add(0)
journal.commit()
print(os.path.getsize(os.path.join(directory, "journal.sqlite-wal")), flush=True)
add(1)
if mode == "before-commit":
    print("ready", flush=True)
    sys.stdin.read()  # until killed
elif mode == "mid-commit":
    journal._db.execute("PRAGMA cache_size = 2")  # the batch spills into the write-ahead log before it commits
    calls = 0
    def progress():
        global calls
        calls += 1
        if calls == 50:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0
    journal._db.set_progress_handler(progress, 1000)
    journal.commit()
    print("committed", flush=True)  # never reached
elif mode == "after-commit":
    journal.commit()
    os.kill(os.getpid(), signal.SIGKILL)  # no clean close: both transactions stay in the write-ahead log
'''


def _plan(tmp_path, sender: WireSender, batches: list[list[Send]]) -> Path:
    """A writer's plan: the frames of each batch and one spool item per data frame, as JSON in hex."""
    plan = {"stream": STREAM.decode(), "stream_id": sender.stream_id.hex(),
            "batches": [[[p.hex() for p in a.parts] for a in batch] for batch in batches],
            "spooled": [[[f"{a.seq:06d}.msg", frame_digest(*a.parts).hex(), a.seq] for a in _of(batch, frames.DATA)]
                        for batch in batches]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def _writer(directory, plan: Path, mode: str) -> subprocess.Popen:
    """The writer script in a process of its own."""
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(directory), str(plan), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _two_batches(pki, first: int, second: int, payload: int = 0) -> tuple[WireSender, list[Send], list[Send]]:
    """A sender and two batches of its frames: its start with ``first`` records, then ``second`` more."""
    sender = _sender(pki, checkpoint_max=4096)
    return sender, _stream(sender, first), _stream(sender, second, payload=payload)


def _published(directory, batch: list[Send]) -> list[bool]:
    """For each data frame of ``batch``: is its spool item (as :func:`_plan` names it) in the journal?"""
    journal = Journal(directory)
    try:
        return [journal.published(f"{a.seq:06d}.msg", frame_digest(*a.parts)) for a in _of(batch, frames.DATA)]
    finally:
        journal.close()


def test_a_batch_not_committed_when_the_process_is_killed_is_not_there(pki, tmp_path):
    sender, batch0, batch1 = _two_batches(pki, 5, 5)
    journal_dir = tmp_path / "journal"
    writer = _writer(journal_dir, _plan(tmp_path, sender, [batch0, batch1]), "before-commit")
    try:
        writer.stdout.readline()
        assert writer.stdout.readline() == "ready\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    assert writer.returncode == -signal.SIGKILL
    assert _served_seqs(journal_dir, sender.stream_id) == [1, 2, 3, 4, 5]
    assert _published(journal_dir, batch0) == [True] * 5
    assert _published(journal_dir, batch1) == [False] * 5
    assert Journal(journal_dir).last_run(STREAM) == (sender.stream_id, 5)


def test_kill_9_in_the_middle_of_a_commit_leaves_the_committed_intact(pki, tmp_path):
    sender, batch0, batch1 = _two_batches(pki, 10, 1000, payload=1000)
    journal_dir = tmp_path / "journal"
    writer = _writer(journal_dir, _plan(tmp_path, sender, [batch0, batch1]), "mid-commit")
    wal_after_batch0 = int(writer.stdout.readline())
    assert writer.wait(30) == -signal.SIGKILL
    # The kill came after part of the batch was written to the log: a torn, uncommitted tail.
    assert (journal_dir / (DATABASE + "-wal")).stat().st_size > wal_after_batch0
    journal = Journal(journal_dir)
    reader = JournalReader(journal_dir)
    assert reader.data(sender.stream_id, 1, 2**62, 10**9) == [(a.seq, a.epoch, *a.parts) for a in _of(batch0, frames.DATA)]
    assert reader.damaged == 0
    assert journal.last_run(STREAM) == (sender.stream_id, 10)
    assert _published(journal_dir, batch1)[:3] == [False] * 3
    # And the journal goes on: the same batch commits now.
    for a in batch1:
        journal.add_parts(a.parts)
    journal.commit()
    assert _served_seqs(journal_dir, sender.stream_id) == list(range(1, 1011))


def test_a_truncated_write_ahead_log_loses_only_the_torn_transaction(pki, tmp_path):
    sender, batch0, batch1 = _two_batches(pki, 10, 20)
    journal_dir = tmp_path / "journal"
    writer = _writer(journal_dir, _plan(tmp_path, sender, [batch0, batch1]), "after-commit")
    writer.stdout.readline()
    assert writer.wait(30) == -signal.SIGKILL
    wal = journal_dir / (DATABASE + "-wal")
    size = wal.stat().st_size
    assert size > 0
    os.truncate(wal, size - 100)  # the last bytes of the log are lost: the second commit's end
    journal = Journal(journal_dir)
    reader = JournalReader(journal_dir)
    assert reader.data(sender.stream_id, 1, 2**62, 10**9) == [(a.seq, a.epoch, *a.parts) for a in _of(batch0, frames.DATA)]
    assert [row[:2] for row in reader.checkpoints(sender.stream_id, 1, 2**62)] == [(1, 10)]
    assert reader.damaged == 0
    assert journal.last_run(STREAM) == (sender.stream_id, 10)
    assert _published(journal_dir, batch0) == [True] * 10 and _published(journal_dir, batch1) == [False] * 20


def test_after_kill_9_both_committed_transactions_are_served(pki, tmp_path):
    """The control for the test above: the same log, not truncated, holds both commits."""
    sender, batch0, batch1 = _two_batches(pki, 10, 20)
    writer = _writer(tmp_path / "journal", _plan(tmp_path, sender, [batch0, batch1]), "after-commit")
    writer.stdout.readline()
    assert writer.wait(30) == -signal.SIGKILL
    assert _served_seqs(tmp_path / "journal", sender.stream_id) == list(range(1, 31))
    assert _published(tmp_path / "journal", batch1) == [True] * 20


def _served_once_reopened(pki, tmp_path, damage):
    """A closed journal of a grouped stream (its write-ahead log folded into the database file); ``damage``
    is applied to the file, then every frame a reader serves is gathered, by kind."""
    sender = _sender(pki, group_size=1, checkpoint_max=4)
    sends = _stream(sender, 10)
    _journaled(tmp_path, sender, sends).close()
    assert not (tmp_path / (DATABASE + "-wal")).exists()
    damage(tmp_path / DATABASE, sends)
    reader = JournalReader(tmp_path)
    sid = sender.stream_id
    announcement = reader.announcement(sid, 1)
    kek_ids = [g.tag + b".%d" % g.generation for g in (frames.decode(a.parts) for a in _of(sends, frames.GROUP))]
    served = {
        frames.DATA: [tuple(row[2:]) for row in reader.data(sid, 1, 10, 100)],
        frames.CHECKPOINT: [tuple(row[2:]) for row in reader.checkpoints(sid, 1, 10)],
        frames.ANNOUNCEMENT: [tuple(announcement[1:])] if announcement else [],
        frames.GROUP: sorted(tuple(row[1:]) for row in reader.group_announcements(sid, kek_ids)),
        frames.RUN: [run] if (run := reader.run_frame(sid)) else [],
    }
    return sends, served, reader.damaged


@pytest.mark.parametrize("kind", [frames.DATA, frames.CHECKPOINT, frames.ANNOUNCEMENT, frames.GROUP, frames.RUN],
                         ids=["data", "checkpoint", "announcement", "group-announcement", "run-frame"])
def test_a_frame_damaged_on_disk_is_never_served(pki, tmp_path, kind):
    flipped = {}

    def flip_one_byte(path: Path, sends: list[Send]) -> None:
        """Flip one bit in the body of the last frame of ``kind``, where it lies in the database file."""
        victim = _of(sends, kind)[-1]
        needle = bytes(victim.parts[1][:64])
        data = bytearray(path.read_bytes())
        assert data.count(needle) == 1  # the frame's body lies in the file once, in one page
        at = data.find(needle) + len(needle) - 5
        data[at] ^= 0x20
        path.write_bytes(bytes(data))
        flipped["parts"] = tuple(victim.parts)

    sends, served, damaged = _served_once_reopened(pki, tmp_path, flip_one_byte)
    for k in (frames.DATA, frames.CHECKPOINT, frames.ANNOUNCEMENT, frames.GROUP, frames.RUN):
        expected = sorted({tuple(a.parts) for a in _of(sends, k)} - {flipped["parts"]})
        assert sorted(served[k]) == expected, k
    assert damaged == 1


def test_an_undamaged_journal_serves_every_frame(pki, tmp_path):
    """The control for the test above: reopened without damage, every frame of every kind is served."""
    sends, served, damaged = _served_once_reopened(pki, tmp_path, lambda path, sends: None)
    for k in (frames.DATA, frames.CHECKPOINT, frames.ANNOUNCEMENT, frames.GROUP, frames.RUN):
        assert sorted(served[k]) == sorted({tuple(a.parts) for a in _of(sends, k)}), k
    assert damaged == 0


# -- retention -------------------------------------------------------------------------------------

class _Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 0.0) -> None:
        """A clock that reads ``now`` until moved."""
        self.now = now

    def __call__(self) -> float:
        """The time now."""
        return self.now


def test_frames_older_than_max_age_are_dropped(pki, tmp_path):
    clock = _Clock(1000.0)
    sender = _sender(pki, checkpoint_max=5)
    journal = Journal(tmp_path, max_age=50.0, clock=clock)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal)
    old = _stream(sender, 5)
    _record(recorder, old, sender.stream_id)  # written at 1000
    clock.now = 1040.0
    new = _stream(sender, 5)
    _record(recorder, new, sender.stream_id)  # written at 1040
    assert journal.expire() == 0  # nothing is older than 50 s yet
    clock.now = 1060.0
    dropped = journal.expire()
    # the five old data frames and their checkpoint; the epoch's announcement and the run frame stay, because
    # the newer frames of the same epoch need them (§10.3)
    assert dropped == 6
    assert _served_seqs(tmp_path, sender.stream_id) == [6, 7, 8, 9, 10]
    assert [row[:2] for row in JournalReader(tmp_path).checkpoints(sender.stream_id, 1, 10)] == [(6, 10)]
    assert journal.count() == 8
    clock.now = 1100.0
    assert journal.expire() == 8 and journal.count() == 0
    info = JournalReader(tmp_path).run(STREAM, sender.stream_id)  # none held: an empty range after the last
    assert (info.last_seq, info.first_available, info.last_available) == (10, 11, 10)


def test_a_sealed_root_record_stays_while_its_run_has_data_frames(pki, tmp_path):
    """Key tree mode (§10.3): the roots let a reader open the run's epochs from the journal, so they go only with
    the run's last data frame, however old they are."""
    from zmqsec.drivers.roots import RootArchive
    from zmqsec.protocol.rootarchive import RootRecord

    clock = _Clock(1000.0)
    sender = _sender(pki, checkpoint_max=5)
    journal = Journal(tmp_path, max_age=50.0, clock=clock)
    journal.open_run(STREAM, sender.stream_id, None)
    RootArchive(journal, STREAM, sender.stream_id, bytes(32)).add(RootRecord(1, b"", bytes(32), (bytes(32),), ()))
    recorder = Recorder(lambda parts: None, journal)
    _record(recorder, _stream(sender, 5), sender.stream_id)  # written at 1000, with the root record
    clock.now = 1040.0
    _record(recorder, _stream(sender, 5), sender.stream_id)
    clock.now = 1060.0
    journal.expire()
    assert [g for g, _ in JournalReader(tmp_path).roots(sender.stream_id)] == [1]  # older than 50 s, still needed
    clock.now = 1100.0
    journal.expire()
    assert JournalReader(tmp_path).roots(sender.stream_id) == [] and journal.count() == 0


def test_an_announcement_stays_while_frames_of_its_epoch_are_kept(pki, tmp_path):
    """Replay serves a kept data frame with its epoch's announcement (§10.4); the announcement was written when
    the epoch began and is re-sent, the same bytes, with every re-announcement: it must not expire first."""
    clock = _Clock(1000.0)
    sender = _sender(pki, checkpoint_max=5)
    journal = Journal(tmp_path, max_age=50.0, clock=clock)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal)
    _record(recorder, _stream(sender, 5), sender.stream_id)  # epoch 1 begins at 1000
    clock.now = 1100.0
    later = _stream(sender, 5, now=100.0) + [a for a in sender.actions.tick(101.0) if isinstance(a, Send)]
    assert _of(later, frames.ANNOUNCEMENT) and {a.epoch for a in _of(later, frames.DATA)} == {1}
    _record(recorder, later, sender.stream_id)
    recorder.commit()
    clock.now = 1120.0
    journal.expire()
    reader = JournalReader(tmp_path)
    assert [row[0] for row in reader.data(sender.stream_id, 1, 10, 100)] == [6, 7, 8, 9, 10]
    assert reader.announcement(sender.stream_id, 1) is not None
    assert reader.run_frame(sender.stream_id) is not None


def test_over_max_bytes_the_oldest_frames_go_and_the_file_shrinks(pki, tmp_path):
    sender = _sender(pki, checkpoint_max=100)
    journal = Journal(tmp_path, clock=_Clock(1000.0))
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal)
    for _ in range(30):
        _record(recorder, _stream(sender, 100, payload=1000), sender.stream_id)
    before, frames_before = journal.size(), journal.count()
    assert before > 3_000_000
    journal.max_bytes = 1_500_000
    dropped = journal.expire()
    after = journal.size()
    seqs = _served_seqs(tmp_path, sender.stream_id)
    assert after <= journal.max_bytes < before
    assert dropped == frames_before - journal.count() > 0
    assert seqs == list(range(seqs[0], 3001)) and seqs[0] > 1  # the newest kept, in one piece
    # ...and only about as much as had to go: what is left fills a good part of max_bytes.
    assert len(seqs) * 1000 > journal.max_bytes / 3


# -- a full filesystem ------------------------------------------------------------------------------

_FULL = r'''
"""A journal on a small tmpfs, driven line by line over a Unix socket (argv[1]) by test_journal.py."""
import json, socket, sys
from zmqsec.drivers.journal import Journal, JournalReader
from zmqsec.drivers.recorder import Recorder
from zmqsec.protocol import frames

control, directory, plan_path = "\0" + sys.argv[1], *sys.argv[2:4]  # an abstract socket name
plan = json.load(open(plan_path))
sid = bytes.fromhex(plan["stream_id"])
now = [0.0]
sent = []
journal = Journal(directory)
journal.open_run(plan["stream"].encode(), sid, None)
recorder = Recorder(lambda parts: sent.append(parts[0][-1:].decode()), journal, clock=lambda: now[0])
conn = socket.socket(socket.AF_UNIX)
conn.connect(control)
lines = conn.makefile("rw")

def frame_list(i):
    return [(f["kind"], f["seq"], f["epoch"], [bytes.fromhex(p) for p in f["parts"]]) for f in plan["batches"][i]]

def state():
    reader = JournalReader(directory)
    seqs = [row[0] for row in reader.data(sid, 1, 2**62, 10**9)]
    out = {"seqs": seqs, "damaged": reader.damaged, "pending": journal.pending, "blocked": recorder.blocked,
           "sent": "".join(sent), "published": [journal.published(n, bytes.fromhex(d)) for n, d in plan["items"]]}
    reader.close()
    return out

for line in lines:
    command, *args = line.split()
    answer = {}
    try:
        if command == "add":  # a batch into the journal, with its spool items
            i = int(args[0])
            for kind, seq, epoch, parts in frame_list(i):
                journal.add_parts(parts)
            for n, d in plan["items"]:
                if n.startswith(f"{i}-"):
                    journal.spooled(n, bytes.fromhex(d), sid, 0)
        elif command == "commit":
            journal.commit()
        elif command == "record":  # a batch through the recorder, as the publisher sends it
            for kind, seq, epoch, parts in frame_list(int(args[0])):
                if kind == "D":
                    recorder.data(parts, sid, seq, epoch)
                elif kind == "S":
                    recorder.checkpoint(parts)
                else:
                    recorder.control(parts)
            recorder.commit()  # as the publisher's flush at the end of a spool batch
        elif command == "tick":
            now[0] = float(args[0])
            recorder.tick()
        elif command == "exit":
            break
    except Exception as exc:
        answer["error"] = type(exc).__name__
        answer["message"] = str(exc)
    answer.update(state())
    lines.write(json.dumps(answer) + "\n")
    lines.flush()
'''


class _SmallDisk:
    """The :data:`_FULL` script on a tmpfs of its own (:mod:`kit.mounts`), and the line protocol to drive it."""

    def __init__(self, tmp_path: Path, plan: Path, size: str = "1m") -> None:
        """Start the script on a tmpfs of ``size`` over the journal of ``plan``; skip where no tmpfs can be made."""
        why = mounts.missing_tools()
        if why or os.geteuid() != 0:
            pytest.skip(why or "a private tmpfs needs root")
        script = tmp_path / "small_disk.py"
        script.write_text(_FULL)
        control = f"zmqsec-test-journal-{os.getpid()}-{id(self)}"  # abstract: no path, no length limit
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind("\0" + control)
        self._listener.listen(1)
        self._listener.settimeout(60)
        self.log = tmp_path / "small_disk.log"
        self.tmpfs = mounts.start([sys.executable, script, control, tmp_path / "disk" / "journal",
                                   plan], tmp_path / "disk", size, log=self.log)
        try:
            conn, _ = self._listener.accept()
        except TimeoutError:
            raise AssertionError(f"the journal on the small disk did not start: {self.log.read_text()}") from None
        conn.settimeout(60)
        self._lines = conn.makefile("rw")
        # Only a tmpfs of our own may be filled: never the disk the test directory is on.
        assert self.tmpfs.mounted() and os.statvfs(self.tmpfs.inside()).f_blocks * os.statvfs(
            self.tmpfs.inside()).f_frsize <= 4 * 1024 * 1024

    def __call__(self, command: str) -> dict:
        """Send one command line, return the script's answer (the journal's state after it)."""
        self._lines.write(command + "\n")
        self._lines.flush()
        answer = self._lines.readline()
        assert answer, f"the journal script died: {self.log.read_text()}"
        return json.loads(answer)

    def fill(self) -> None:
        """Fill the tmpfs up."""
        self.tmpfs.fill()

    def free(self) -> None:
        """Give the space back."""
        self.tmpfs.remove()

    def close(self) -> None:
        """End the script (and with it the tmpfs)."""
        try:
            self("exit")
        except (AssertionError, OSError):
            pass
        try:
            self.tmpfs.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.tmpfs.proc.kill()
            self.tmpfs.proc.wait(10)
        self._listener.close()


def _disk_plan(tmp_path, pki) -> tuple[Path, list[Send], list[Send]]:
    """Two batches for the small disk: the start with 5 small records, then 100 records of 1 KB (more than
    a full disk has room for); each data frame is a spool item ``<batch>-<seq>``."""
    sender = _sender(pki, checkpoint_max=4096)
    batches = [_stream(sender, 5), _stream(sender, 100, payload=1000)]
    plan = {"stream": STREAM.decode(), "stream_id": sender.stream_id.hex(),
            "batches": [[{"kind": a.kind.decode(), "seq": a.seq, "epoch": a.epoch, "parts": [p.hex() for p in a.parts]}
                         for a in batch] for batch in batches],
            "items": [[f"{i}-{a.seq}", frame_digest(*a.parts).hex()] for i, batch in enumerate(batches)
                      for a in _of(batch, frames.DATA)]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path, batches[0], batches[1]


def test_a_full_filesystem_stops_the_commit_and_loses_nothing_committed(pki, tmp_path):
    plan, _, _ = _disk_plan(tmp_path, pki)
    disk = _SmallDisk(tmp_path, plan)
    try:
        disk("add 0")
        state = disk("commit")
        assert "error" not in state and state["seqs"] == [1, 2, 3, 4, 5]
        disk.fill()
        disk("add 1")
        state = disk("commit")
        assert state.get("error") == JournalFull.__name__, state
        assert state["seqs"] == [1, 2, 3, 4, 5] and state["damaged"] == 0  # nothing committed is lost
        assert state["published"] == [True] * 5 + [False] * 100
        assert state["pending"] == 100 + 1  # the batch is kept for the next commit
        disk.free()
        state = disk("commit")
        assert "error" not in state, state
        assert state["seqs"] == list(range(1, 106)) and state["published"] == [True] * 105 and state["pending"] == 0
    finally:
        disk.close()


def test_the_recorder_holds_checkpoints_while_the_disk_is_full(pki, tmp_path):
    plan, batch0, batch1 = _disk_plan(tmp_path, pki)
    disk = _SmallDisk(tmp_path, plan)
    try:
        state = disk("record 0")
        assert "error" not in state, state
        assert state["sent"] == "".join(a.kind.decode() for a in batch0) and not state["blocked"]
        disk.fill()
        state = disk("record 1")
        assert "error" not in state, state  # a full disk is a state, not a crash
        sent_before = len(batch0)
        # The data frames went out at once; their checkpoint waits for its commit.
        assert state["sent"][sent_before:] == "D" * 100 and state["blocked"]
        state = disk("tick 1.0")  # retried every Recorder.RETRY seconds: not yet
        assert state["blocked"] and state["sent"][sent_before:] == "D" * 100
        disk.free()
        state = disk("tick 1.5")
        assert state["blocked"], "retried before Recorder.RETRY seconds"
        state = disk(f"tick {Recorder.RETRY + 0.5}")
        assert "error" not in state and not state["blocked"]
        assert state["sent"][sent_before:] == "D" * 100 + "S"  # the checkpoint, once it is durable
        assert state["seqs"] == list(range(1, 106)) and state["damaged"] == 0
    finally:
        disk.close()


def test_checkpoints_due_within_a_group_commit_interval_share_one_commit(pki, tmp_path):
    now = [0.0]
    sent: list[bytes] = []
    sender = _sender(pki, checkpoint_max=5)
    journal = Journal(tmp_path)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: sent.append(parts[0][-1:]), journal, clock=lambda: now[0])
    sends = _stream(sender, 15)  # three checkpoints
    for a in sends:
        (recorder.checkpoint(a.parts) if a.kind == frames.CHECKPOINT else
         recorder.data(a.parts, sender.stream_id, a.seq, a.epoch) if a.kind == frames.DATA else recorder.control(a.parts))
    assert sent.count(frames.CHECKPOINT) == 1  # the first committed at once; the next two wait for the group
    assert recorder.deadline == Recorder.COMMIT_EVERY and journal.pending > 0 and not recorder.blocked
    recorder.tick()
    assert sent.count(frames.CHECKPOINT) == 1  # not due yet
    now[0] = Recorder.COMMIT_EVERY
    recorder.tick()
    assert sent.count(frames.CHECKPOINT) == 3 and journal.pending == 0 and recorder.deadline is None
    assert sent[-2:] == [frames.CHECKPOINT, frames.CHECKPOINT]  # each after every data frame it vouches for


def test_a_background_commit_sends_each_checkpoint_only_after_its_batch_is_durable(pki, tmp_path):
    sent: list[bytes] = []
    sender = _sender(pki, checkpoint_max=5)
    journal = Journal(tmp_path)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: sent.append(bytes(parts[0][-1:])), journal, background=True)
    try:
        _record(recorder, _stream(sender, 20), sender.stream_id)  # ends with commit(): it waits
        assert sent.count(frames.CHECKPOINT) == 4 and journal.pending == 0
        assert _served_seqs(tmp_path, sender.stream_id) == list(range(1, 21))
        # Without a forced commit the checkpoints go out once the committer thread is done, at a tick.
        _stream_only = _stream(sender, 10)
        for a in _stream_only:
            (recorder.checkpoint(a.parts) if a.kind == frames.CHECKPOINT else
             recorder.data(a.parts, sender.stream_id, a.seq, a.epoch) if a.kind == frames.DATA else
             recorder.control(a.parts))
        deadline = time.monotonic() + 10
        while sent.count(frames.CHECKPOINT) < 6 and time.monotonic() < deadline:
            time.sleep(Recorder.COMMIT_EVERY / 5)
            recorder.tick()
        assert sent.count(frames.CHECKPOINT) == 6
        assert _served_seqs(tmp_path, sender.stream_id) == list(range(1, 31))
    finally:
        recorder.close()
        journal.close()


def test_a_publisher_outrunning_its_journal_waits_for_it(pki, tmp_path, monkeypatch):
    """Frames sent but not yet durable are bounded (MAX_UNCOMMITTED bytes): readers hold them until their
    checkpoint, within a budget of their own, so the publisher waits for the commit rather than run ahead."""
    monkeypatch.setattr(Recorder, "MAX_UNCOMMITTED", 4096)
    sender = _sender(pki, checkpoint_max=256)
    journal = Journal(tmp_path)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal, background=True)
    try:
        most = 0
        sends = [a for a in _stream(sender, 200, payload=100) if a.kind == frames.DATA]
        size = len(sends[0].parts[1])
        assert 200 * size > 4 * 4096  # four times the bound
        for a in sends:
            recorder.make_room()
            recorder.data(a.parts, sender.stream_id, a.seq, a.epoch)
            most = max(most, recorder.uncommitted)
        assert recorder.waits > 0 and most <= 4096 + size  # over by one frame at most
        assert recorder.commit() and recorder.uncommitted == 0
        assert _served_seqs(tmp_path, sender.stream_id) == list(range(1, 201))
    finally:
        recorder.close()
