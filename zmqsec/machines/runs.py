"""The publisher runs a reader knows (docs/PROTOCOL.md §4.4, §6.2): one state per stream id, which
run is live for each stream name, and the earlier runs that are never accepted again."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field

from zmqsec.protocol.announce import Publisher
from zmqsec.protocol.frames import stream_name

from .events import ReceiverPolicy, Restarted
from .keyring import Keyring
from .sequencer import HoldCount, Sequencer

RETIRED_KEPT = 256  # stream ids of earlier runs remembered
MAX_EXPECTED = 16  # runs being completed from replay at once


@dataclass
class Run:
    """One publisher run (stream id): its publisher once known, its keys, its frames in flight."""

    stream_id: bytes
    name: bytes
    created: float
    keyring: Keyring
    sequencer: Sequencer
    publisher: Publisher | None = None
    previous: tuple[bytes, int] | None = None  # from its run frame: (previous stream id, its last seq)
    repair: bool = False  # known from replay only: never made the live run by a replayed frame
    replayed: tuple[int, int] | None = None  # the seqs replays brought (live copies in it come late, harmlessly)


@dataclass
class Runs:
    """Every run a reader holds state for, bounded by ``max_streams``."""

    policy: ReceiverPolicy
    runs: dict[bytes, Run] = field(default_factory=dict)
    current: dict[bytes, bytes] = field(default_factory=dict)  # stream name -> stream id of the live run
    latest_signed: dict[bytes, dt.datetime] = field(default_factory=dict)  # stream name -> newest signingTime
    _retired: OrderedDict = field(default_factory=OrderedDict)
    followed: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # stream name -> (run, last stored seq)
    expected: dict[bytes, int] = field(default_factory=dict)  # runs asked from replay -> last seq stored before
    lost: dict[bytes, int] = field(default_factory=dict)  # runs not met yet -> the last seq no server holds
    hold: HoldCount = field(default_factory=HoldCount)  # frames held by every run together

    def resume(self, name: bytes, stream_id: bytes, last_seq: int) -> None:
        """The reader stored ``stream_id`` up to ``last_seq`` before (its position): that run continues from
        there, and any later run of ``name`` is read from its start."""
        self.followed[name] = (stream_id, last_seq)
        run = self.runs.get(stream_id)
        if run is not None and run.sequencer.last_delivered is None:
            run.sequencer.last_delivered = last_seq

    def expect(self, stream_id: bytes, first: int) -> None:
        """Replayed frames of ``stream_id`` from ``first`` on are asked for: accept them, even for a run
        retired from the live stream."""
        self.expected[stream_id] = min(first - 1, self.expected.get(stream_id, first - 1))
        while len(self.expected) > MAX_EXPECTED:  # the oldest asks go: their runs may be evicted again
            del self.expected[next(iter(self.expected))]
        run = self.runs.get(stream_id)
        if run is not None and run.sequencer.last_delivered is None:
            run.sequencer.last_delivered = first - 1

    def give_up(self, stream_id: bytes, first: int, last: int) -> None:
        """No replay server holds ``first..last`` of ``stream_id``: stop waiting for it, now, or once the run's
        first frame arrives (a restarted reader learns it before any live frame)."""
        run = self.runs.get(stream_id)
        if run is not None:
            run.sequencer.give_up(first, last)
            return
        self.lost[stream_id] = max(last, self.lost.pop(stream_id, 0))
        while len(self.lost) > MAX_EXPECTED:
            del self.lost[next(iter(self.lost))]

    def _start(self, name: bytes, stream_id: bytes) -> int | None:
        """Where a new run's delivery starts (the last seq before it), or None: wherever it is joined."""
        if stream_id in self.expected:
            return self.expected[stream_id]
        followed = self.followed.get(name)
        if followed is not None:
            return followed[1] if followed[0] == stream_id else 0
        # Reading another run of this stream already: a restarted publisher's run is read from its start
        # (what it sent before this reader reconnected is fetched by replay).  Only the first run is joined.
        live = self.current.get(name)
        return 0 if live is not None and live != stream_id else None

    def retired(self, stream_id: bytes, replayed: bool = False) -> bool:
        """Is this the stream id of an earlier run, whose frames are refused (a replay nobody asked for)?"""
        return stream_id in self._retired and not (replayed and stream_id in self.expected)

    def get(self, stream_id: bytes) -> Run | None:
        """The state of a known run."""
        return self.runs.get(stream_id)

    def open(self, frame, now: float, replayed: bool = False) -> Run:
        """The run of a frame, created on first sight.  Callers have refused retired runs already
        (:meth:`retired`): this is on every frame's path."""
        run = self.runs.get(frame.stream_id)
        if run is None:
            if len(self.runs) >= self.policy.max_streams:
                self._evict()
            name = stream_name(frame.topic)
            run = self.runs[frame.stream_id] = Run(
                frame.stream_id, name, now, Keyring(self.policy),
                Sequencer(name, frame.stream_id, self.policy, self._start(name, frame.stream_id), self.hold),
                repair=replayed)
            if frame.stream_id in self.lost:
                run.sequencer.give_up(0, self.lost.pop(frame.stream_id))
        return run

    def _evict(self) -> None:
        """Forget the oldest run that is neither live nor being repaired."""
        live = set(self.current.values()) | set(self.expected)
        victims = sorted((run.created, sid) for sid, run in self.runs.items() if sid not in live)
        if victims:
            self.runs.pop(victims[0][1]).sequencer.forget()

    def older_than_live(self, run: Run, publisher: Publisher, replayed: bool = False) -> bool:
        """A new run claims a stream only with an announcement signed after everything the live run announced
        (a replayed announcement claims nothing: it completes an earlier run)."""
        previous = self.current.get(run.name)
        if replayed or (run.publisher is not None and not run.repair) or previous is None or previous == run.stream_id:
            return False
        latest = self.latest_signed.get(run.name)
        return publisher.signed_at is None or (latest is not None and publisher.signed_at < latest)

    def bind(self, run: Run, publisher: Publisher, replayed: bool = False) -> Restarted | None:
        """The run's first accepted live announcement: it becomes the live run of its stream name.  A replayed
        one only names the run's publisher."""
        event = None
        if replayed:
            run.publisher = run.publisher or publisher
            return None
        if run.repair:  # known from replay so far, now seen live
            run.repair = False
            if self.current.get(run.name) != run.stream_id:
                run.publisher = None
        if run.publisher is None:
            run.publisher = publisher
            previous = self.current.get(run.name)
            self.current[run.name] = run.stream_id
            if previous is not None and previous != run.stream_id:
                event = Restarted(run.name, previous, run.stream_id, publisher.dn)
                self.forget(previous)
        if publisher.signed_at is not None:
            latest = self.latest_signed.get(run.name, publisher.signed_at)
            self.latest_signed[run.name] = max(publisher.signed_at, latest)
        return event

    def forget(self, stream_id: bytes) -> None:
        """Retire a stream id: its state goes, and it is never accepted again (replays of that run);
        the live run itself is never retired."""
        if stream_id in self.expected:  # being completed from replay: keep its state, refuse it live
            self._retired[stream_id] = None
            return
        old = self.runs.pop(stream_id, None)
        if old is not None:
            old.sequencer.forget()
            if self.current.get(old.name) == stream_id:
                return
        self._retired[stream_id] = None
        while len(self._retired) > RETIRED_KEPT:
            self._retired.popitem(last=False)

    @property
    def held(self) -> int:
        """Frames held across every run."""
        return self.hold.frames

    @property
    def held_bytes(self) -> int:
        """Bytes held across every run."""
        return self.hold.bytes
