"""A reader's repairs (docs/PROTOCOL.md §10.5): asks its replay servers for what it misses, feeds the
replayed frames to the receiver, and keeps its positions.

The decisions are the machines' (:class:`~zmqsec.machines.repair.Repairer`,
:class:`~zmqsec.machines.positions.Positions`); this driver owns the sockets
(:class:`~zmqsec.drivers.replay.ReplayLink`) and the position file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from pathlib import Path

import zmq

from zmqsec.errors import ZmqsecError
from zmqsec.files import atomic_write
from zmqsec.machines.positions import Positions
from zmqsec.machines.receiver import CatchUp, Missing, Restarted, RunLinked, StreamReceiver, TreeKeysAccepted
from zmqsec.protocol import frames
from zmqsec.machines.repair import Abandon, Ask, Cancel, Grant, Repairer
from zmqsec.protocol import replay
from zmqsec.protocol.replay import ReplayMessageError

from .curve import CurveClient
from .replay import ReplayLink

log = logging.getLogger("zmqsec.reader")

ROOTS_IN_FLIGHT = 64  # roots requests awaiting an answer, at most
QUIET = 5.0  # seconds without a live frame (re-announcements come every second) before asking replay


class PositionFile:
    """A reader's positions on disk: JSON, replaced atomically and synced (docs/PROTOCOL.md §10.5)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> Positions:
        """The saved positions (none yet: empty); a damaged file is an error naming it, not a silent restart."""
        try:
            return Positions.from_snapshot(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return Positions()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ZmqsecError(f"{self.path}: the reader's position file cannot be read ({exc.__class__.__name__}); "
                              "move it aside to start over (records may then be stored twice)") from None

    def save(self, positions: Positions) -> None:
        """Write the positions durably."""
        atomic_write(self.path, json.dumps(positions.snapshot(), sort_keys=True).encode())


class Mender:
    """Replay on behalf of one reader's receiver."""

    def __init__(self, receiver: StreamReceiver, endpoints: list[str], *, tags: bytes = b"",
                 positions: Positions | None = None, context: zmq.Context | None = None,
                 curve: CurveClient | None = None) -> None:
        self.receiver = receiver
        self.positions = positions if positions is not None else Positions()
        self.link = ReplayLink(endpoints, context=context, curve=curve) if endpoints else None
        self.repairer = Repairer(len(endpoints), tags)
        self.counters: collections.Counter = collections.Counter()
        self._requests: set[tuple[int, int]] = set()  # (server, request id) in flight
        self._roots: dict[tuple[int, int], bytes] = {}  # the roots requests among them -> their run, bounded
        self._last_live = self._next_probe = time.monotonic()
        for name, run, seq in self.positions.resume():
            receiver.resume(name, run, seq)

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The replay connections, to poll beside the stream."""
        return self.link.sockets if self.link else []

    def start(self, now: float) -> None:
        """Ask for everything the saved positions say is not stored yet."""
        for name, run, first, last in self.positions.repairs():
            self._act(self.repairer.missing(name, run, first, last, now))

    def handle(self, events, now: float) -> None:
        """React to the receiver's events: holes and run frames call for repairs."""
        for event in events:
            if isinstance(event, Missing):
                self._act(self.repairer.missing(event.stream, event.stream_id, event.first, event.last, now))
            elif isinstance(event, Restarted):
                # The run this reader followed ended where only the journal knows (its successor's run frame may
                # never reach us: a run killed within a second): ask for whatever follows the position of every
                # run not stored to its end.
                for name, run, first, last in self.positions.repairs():
                    if run != event.new_stream_id:
                        self._act(self.repairer.missing(name, run, first, last, now))
            elif isinstance(event, CatchUp) and event.generation and self.link is not None:
                # Epoch keys of this run wait for tree roots we do not hold: its publisher's replay server keeps
                # them (archive relays answer no-keys).  Every server is asked; the answer is a path envelope.
                self._ask_roots(event.stream, event.stream_id, event.generation)
            elif isinstance(event, RunLinked):
                for name, run, first, last in self.positions.linked(event.stream, event.stream_id,
                                                                    event.previous_stream_id, event.previous_last_seq):
                    if run == event.stream_id:
                        log.info("stream %s: new run %s; fetching what it sent from %d on", name.decode(errors="replace"),
                                 run.hex(), first)
                    else:
                        log.info("stream %s: run %s follows run %s, which is not stored to its end; fetching %d..%d",
                                 name.decode(errors="replace"), event.stream_id.hex(), run.hex(), first, last)
                    self._act(self.repairer.missing(name, run, first, last, now))

    def _ask_roots(self, stream: bytes, run: bytes, generation: int) -> None:
        for server in range(len(self.link.sockets)):
            request_id = self.repairer.next_id()
            self._requests.add((server, request_id))
            self._roots[(server, request_id)] = run
            while len(self._roots) > ROOTS_IN_FLIGHT:  # unanswered (a dead server): forget the oldest
                self._requests.discard(oldest := next(iter(self._roots)))
                del self._roots[oldest]
            self.counters["roots-requests"] += 1
            self.link.send(server, replay.Roots(request_id, stream, run, self.receiver.intake.tree_bits, generation))

    def stored(self, stream: bytes, stream_id: bytes, seq: int) -> None:
        """A delivered record is in the incoming spool."""
        self.positions.stored(stream, stream_id, seq)

    def poll(self, now: float, limit: int = 1024) -> list:
        """Feed what the replay servers sent to the receiver; returns the receiver's events."""
        if self.link is None:
            return []
        events = []
        for server, parts in self.link.receive(limit):
            try:
                kind, request_id, fields = replay.decode_server(parts[0])
            except (ReplayMessageError, IndexError):
                self.counters["replay-garbage"] += 1
                continue
            if (server, request_id) not in self._requests:
                self.counters["replay-unasked"] += 1  # an answer to nothing we asked (or asked of another server)
                continue
            if (server, request_id) in self._roots:
                events += self._roots_answer(server, request_id, kind, fields, parts, now)
            elif kind == replay.FRAME and len(parts) == 3:
                self.counters["replayed-frames"] += 1
                self._act(self.repairer.frame(server, request_id, now))
                events += self.receiver.frame_received(parts[1:], now, replayed=True)
            elif kind == replay.END:
                self._requests.discard((server, request_id))
                self._act(self.repairer.end(server, request_id, *fields, now))
            elif kind == replay.ERROR:
                self._requests.discard((server, request_id))
                log.warning("replay server %s: %s (%s)", self.link.endpoints[server], fields[0], fields[1])
                self._act(self.repairer.error(server, request_id, fields[0], now))
        return events

    def _roots_answer(self, server: int, request_id: int, kind: str, fields: list, parts: list, now: float) -> list:
        """A server's answer to a roots request: the path envelope (checked like any tree announcement), or why
        not (an archive relay keeps no keys: expected)."""
        if kind == replay.FRAME and len(parts) == 3:
            run = self._roots[(server, request_id)]
            # A path envelope protects itself (signed, wrapped for us): a live run's goes in as a live frame, a
            # run being repaired's as a replayed one; one of another run than the one asked for is dropped.
            try:
                asked = frames.decode(parts[1:]).stream_id == run
            except frames.FrameError:
                asked = False
            if not asked:
                self.counters["replay-unasked"] += 1
                return []
            events = self.receiver.frame_received(parts[1:], now, replayed=self.receiver.repairing(run))
            self.counters["roots-received"] += sum(isinstance(e, TreeKeysAccepted) for e in events)
            return events
        self._requests.discard((server, request_id))
        self._roots.pop((server, request_id), None)
        if kind == replay.ERROR and fields[0] != replay.NO_KEYS:
            log.warning("replay server %s: no roots (%s: %s)", self.link.endpoints[server], fields[0], fields[1])
        return []

    def live(self, now: float) -> None:
        """A frame arrived on the live stream (the link is alive)."""
        self._last_live = now

    def tick(self, now: float) -> None:
        """Retries, and hand-overs from silent servers; after ``QUIET`` seconds without a live frame (a dead
        link or multicast session sends not even re-announcements), ask the servers what follows the
        position, every ``QUIET`` seconds."""
        self._act(self.repairer.tick(now))
        if self.link is not None and now - self._last_live >= QUIET and now >= self._next_probe:
            self._next_probe = now + QUIET
            for name, run, first, last in self.positions.repairs():
                self._act(self.repairer.missing(name, run, first, last, now))

    def _act(self, actions) -> None:
        for action in actions:
            if isinstance(action, Ask):
                request = action.request
                self.receiver.expect(request.run, request.first)
                self._requests.add((action.server, request.id))
                self.counters["repairs"] += 1
                self.link.send(action.server, request)
            elif isinstance(action, Grant):
                self.link.send(action.server, replay.Credit(action.request_id, action.credit))
            elif isinstance(action, Cancel):
                self._requests.discard((action.server, action.request_id))
                self.link.send(action.server, replay.Cancel(action.request_id))
            elif isinstance(action, Abandon):
                lost = action.last - action.first + 1
                self.counters["unrecoverable"] += lost
                log.error("stream %s run %s: records %d..%d are in no replay server's journal (expired, or never "
                          "journaled): an unrecoverable gap of %d", action.stream.decode(errors="replace"),
                          action.run.hex(), action.first, action.last, lost)
                self.receiver.give_up(action.run, action.first, action.last)

    def close(self) -> None:
        """Close the replay connections."""
        if self.link is not None:
            self.link.close()
