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
from .sequencer import Sequencer

RETIRED_KEPT = 256  # stream ids of earlier runs remembered


@dataclass
class Run:
    """One publisher run (stream id): its publisher once known, its keys, its frames in flight."""

    stream_id: bytes
    name: bytes
    created: float
    keyring: Keyring
    sequencer: Sequencer
    publisher: Publisher | None = None


@dataclass
class Runs:
    """Every run a reader holds state for, bounded by ``max_streams``."""

    policy: ReceiverPolicy
    runs: dict[bytes, Run] = field(default_factory=dict)
    current: dict[bytes, bytes] = field(default_factory=dict)  # stream name -> stream id of the live run
    latest_signed: dict[bytes, dt.datetime] = field(default_factory=dict)  # stream name -> newest signingTime
    _retired: OrderedDict = field(default_factory=OrderedDict)

    def retired(self, stream_id: bytes) -> bool:
        """Is this the stream id of an earlier run (whose frames are replays)?"""
        return stream_id in self._retired

    def get(self, stream_id: bytes) -> Run | None:
        """The state of a known run."""
        return self.runs.get(stream_id)

    def open(self, frame, now: float) -> Run | None:
        """The run of a frame, created on first sight; None for a retired run."""
        if frame.stream_id in self._retired:
            return None
        run = self.runs.get(frame.stream_id)
        if run is None:
            if len(self.runs) >= self.policy.max_streams:
                self._evict()
            name = stream_name(frame.topic)
            run = self.runs[frame.stream_id] = Run(frame.stream_id, name, now, Keyring(self.policy),
                                                   Sequencer(name, frame.stream_id, self.policy))
        return run

    def _evict(self) -> None:
        """Forget the oldest run that is not live."""
        live = set(self.current.values())
        victims = sorted((run.created, sid) for sid, run in self.runs.items() if sid not in live)
        if victims:
            del self.runs[victims[0][1]]

    def older_than_live(self, run: Run, publisher: Publisher) -> bool:
        """A new run claims a stream only with an announcement signed after everything the live run announced."""
        previous = self.current.get(run.name)
        if run.publisher is not None or previous is None or previous == run.stream_id:
            return False
        latest = self.latest_signed.get(run.name)
        return publisher.signed_at is None or (latest is not None and publisher.signed_at < latest)

    def bind(self, run: Run, publisher: Publisher) -> Restarted | None:
        """The run's first accepted announcement: it becomes the live run of its stream name."""
        event = None
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
        old = self.runs.pop(stream_id, None)
        if old is not None and self.current.get(old.name) == stream_id:
            return
        self._retired[stream_id] = None
        while len(self._retired) > RETIRED_KEPT:
            self._retired.popitem(last=False)

    @property
    def held(self) -> int:
        """Frames held across every run."""
        return sum(run.sequencer.held for run in self.runs.values())
