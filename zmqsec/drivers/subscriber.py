"""The reader drivers: a SUB socket per endpoint (:mod:`.links`) around a StreamReceiver, blocking or asyncio.

Both runners share the receiver (all decisions) and :class:`_Events` (logging,
counters, callbacks); they differ only in how they wait for the socket.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from zmqsec.keys.dn import DnAllowList
from zmqsec.errors import ZmqsecError
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import CrlPolicy, TrustStore

from zmqsec.machines.positions import Positions

from .curve import CurveClient, apply_client
from .links import MAX_QUEUED_BYTES, Links, receive
from .mending import Mender
from .refusals import RefusalLog
from zmqsec.protocol.groups import leaf_topic, reader_bits, reader_topics
from zmqsec.protocol.primitives import MAX_ANNOUNCEMENT_FRAME
from zmqsec.machines.receiver import (
    CatchUp,
    Delivered,
    Gap,
    GroupKeyAccepted,
    KeyAccepted,
    ReceiverPolicy,
    Rejected,
    Restarted,
    StreamReceiver,
    TreeKeysAccepted,
)
from .watch import DirectoryWatch

log = logging.getLogger("zmqsec.reader")

TICK = 0.1  # seconds between housekeeping passes while waiting
DRAIN = 1000  # messages taken from a socket per turn at most
MAX_FRAME = MAX_ANNOUNCEMENT_FRAME + 4096  # MAXMSGSIZE: libzmq drops a connection sending a bigger message
REPAIR_TIMEOUT = 30.0  # with replay servers: how long a hole may hold back later records


class _Events:
    """Turns receiver events into log lines, callbacks and a delivery queue."""

    def __init__(self, stream: str, on_gap, on_restart, on_reject) -> None:
        self.stream = stream
        self.on_gap, self.on_restart, self.on_reject = on_gap, on_restart, on_reject
        self.ready: collections.deque[Delivered] = collections.deque()
        self.epoch = 0
        self.repairing = False  # replay servers are configured
        self.refusals = RefusalLog(log, f"stream {stream}")  # one line per reason and interval, whatever floods in
        self.catch_up = False  # keys of our key tree path are missing: ask for our path again

    def handle(self, events) -> None:
        """Queue deliveries; log, count and pass on everything else."""
        for event in events:
            if isinstance(event, Delivered):
                self.ready.append(event)
            elif isinstance(event, Rejected):
                self.refusals.refused(event.name, f"seq {event.seq}: {event.detail}")
                if self.on_reject:
                    self.on_reject(event)
            elif isinstance(event, Gap):
                # With replay servers a gap is what could not be repaired: an error an operator must see.
                (log.error if self.repairing else log.warning)(
                    "stream %s: gap of %d message(s) from seq %d", self.stream, event.count, event.first_missing)
                if self.on_gap:
                    self.on_gap(event)
            elif isinstance(event, Restarted):
                log.warning("stream %s: publisher restarted (%s, new stream id %s)", self.stream,
                            event.publisher_dn, event.new_stream_id.hex())
                if self.on_restart:
                    self.on_restart(event)
            elif isinstance(event, KeyAccepted):
                self.epoch = event.epoch
                log.info("stream %s epoch %d: key accepted from %s", self.stream, event.epoch, event.publisher_dn)
            elif isinstance(event, GroupKeyAccepted):
                log.info("stream %s: key of reader group %r generation %d accepted", self.stream,
                         event.tag.decode(), event.generation)
            elif isinstance(event, TreeKeysAccepted):
                log.info("stream %s: %d key(s) of our key tree path accepted (generation %d)", self.stream,
                         event.keys, event.generation)
            elif isinstance(event, CatchUp):
                self.catch_up = True


class _Base:
    def __init__(
        self,
        stream: str,
        endpoints: list[str],
        credential: Credential,
        trust_dir: str | os.PathLike,
        *,
        allowed_publishers: DnAllowList,
        crl: CrlPolicy = CrlPolicy.REQUIRE,
        policy: ReceiverPolicy | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        on_restart: Callable[[Restarted], None] | None = None,
        on_reject: Callable[[Rejected], None] | None = None,
        curve: CurveClient | None = None,
        replay: list[str] = (),
        positions: Positions | None = None,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        context: zmq.Context,
    ) -> None:
        self.stream = stream
        self.trust_dir = Path(trust_dir)
        self._trust_watch = DirectoryWatch(self.trust_dir)
        policy = policy or ReceiverPolicy()
        if replay and policy.repair_timeout <= 0:
            policy = dataclasses.replace(policy, repair_timeout=REPAIR_TIMEOUT)
        self.receiver = StreamReceiver(credential, TrustStore.from_directory(self.trust_dir),
                                       allowed_publishers=allowed_publishers, crl=crl, policy=policy)
        self.events = _Events(stream, on_gap, on_restart, on_reject)
        self.events.repairing = bool(replay)
        # Replay connections are plain sockets, polled without blocking under asyncio too.
        sync_context = None if isinstance(context, zmq.asyncio.Context) else context
        self.mender = Mender(self.receiver, list(replay), tags=reader_bits(credential.certificate), positions=positions,
                             context=sync_context, curve=curve)
        topics = reader_topics(stream, credential.certificate)  # not the other reader groups' keys
        self._leaf_topic = leaf_topic(stream, credential.certificate)

        def configure(socket: zmq.Socket) -> None:
            socket.setsockopt(zmq.LINGER, 0)
            if curve:
                apply_client(socket, curve)

        self.links = Links(context, list(endpoints), configure, topics=topics, queue_bytes=max_queued_bytes,
                           largest=MAX_FRAME)
        self._next_tick = 0.0
        self.mender.start(time.monotonic())

    @property
    def counters(self):
        """The receiver's counters (deliveries, gaps, refusals by reason)."""
        return self.receiver.counters

    @property
    def positions(self) -> Positions:
        """Where this reader is in each run (docs/PROTOCOL.md §10.5)."""
        return self.mender.positions

    def stored(self, message: Delivered) -> None:
        """Tell the reader a delivered message is stored for good: its position advances (save it with
        :class:`~zmqsec.drivers.mending.PositionFile` after the store is synced)."""
        self.mender.stored(message.stream, message.stream_id, message.seq)

    def _handle(self, events, now: float) -> None:
        if not events:
            return
        self.mender.handle(events, now)
        self.events.handle(events)
        if self.events.catch_up:  # a new subscription to our leaf topic: the publisher sends our path (§4.6)
            self.events.catch_up = False
            log.info("stream %s: keys of our key tree path missing; asking for our path", self.stream)
            self.links.resubscribe(self._leaf_topic)

    def _housekeeping(self, now: float) -> None:
        if now < self._next_tick:
            return
        self._next_tick = now + TICK
        self._handle(self.receiver.tick(now), now)
        self.mender.tick(now)
        self.links.watch(now)
        for parts in self.links.released():
            self._process(parts)
        self.events.refusals.flush()
        if self._trust_watch.changed(now):  # a new CRL or CA: later announcements are judged by it
            try:
                self.receiver.trust = TrustStore.from_directory(self.trust_dir)
            except ZmqsecError as exc:  # being rewritten: looked at again at the next tick
                log.error("trust directory %s: %s; keeping the previous one", self.trust_dir, exc)
                return
            self._trust_watch.seen(now)
            log.info("trust directory %s reloaded", self.trust_dir)

    def _next_wait(self, deadline: float | None) -> float | None:
        """Housekeeping, then how long to wait on the socket; None once a message is ready or time is up."""
        now = time.monotonic()
        self._housekeeping(now)
        self._handle(self.mender.poll(now, DRAIN), now)
        if self.events.ready or (deadline is not None and now >= deadline):
            return None
        return TICK if deadline is None else min(TICK, deadline - now)

    def _ready(self) -> Delivered | None:
        return self.events.ready.popleft() if self.events.ready else None

    def _process(self, parts: list[bytes]) -> None:
        now = time.monotonic()
        self.mender.live(now)
        self._handle(self.receiver.frame_received(parts, now), now)

    def _drain(self) -> None:
        """What is waiting on each link, at most DRAIN messages from each per turn: a flood on one path
        starves neither the others nor the replay servers, the housekeeping or the status file."""
        now = time.monotonic()
        for link in self.links.links:
            for socket in link.sockets:  # two while a link hands over to a narrower socket
                taken = largest = 0
                while taken < DRAIN:
                    try:
                        parts = receive(socket)
                    except zmq.Again:
                        break
                    taken += 1
                    largest = max(largest, sum(map(len, parts)))
                    for frame in link.arrived(socket, parts):  # during a handover: none, or several
                        self._process(frame)
                    if link.paused is socket:  # a handover holds all it may of this socket's frames
                        break
                link.took(socket, taken, largest, now)  # taken or not: an old socket found empty has caught up


class Subscriber(_Base):
    """Blocking reader: ``receive(timeout)`` returns the next verified message, or None."""

    def __init__(self, stream: str, endpoints: list[str], credential: Credential, trust_dir, *,
                 context: zmq.Context | None = None, **options) -> None:
        super().__init__(stream, endpoints, credential, trust_dir, context=context or zmq.Context.instance(), **options)
        self._polled = -1

    def receive(self, timeout: float | None = None) -> Delivered | None:
        """The next verified message, waiting up to ``timeout`` seconds (None: until one arrives); None if time ran out.

        Housekeeping (the receiver's timers, reloading a changed trust directory) runs while it waits.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (wait := self._next_wait(deadline)) is not None:
            if self._polled != self.links.generation:  # a link opened or closed a socket
                self._polled, self._poller = self.links.generation, zmq.Poller()
                for sock in (*self.links.sockets, *self.mender.sockets):
                    self._poller.register(sock, zmq.POLLIN)
            if self._poller.poll(max(1, int(wait * 1000))):
                self._drain()
        return self._ready()

    def __iter__(self):
        while True:
            yield self.receive()

    def close(self) -> None:
        """Close the sockets; messages not yet received are dropped."""
        self.mender.close()
        self.links.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSubscriber(_Base):
    """asyncio reader: ``await receive(timeout)``, or ``async for message in subscriber``."""

    def __init__(self, stream: str, endpoints: list[str], credential: Credential, trust_dir, *,
                 context: zmq.asyncio.Context | None = None, **options) -> None:
        super().__init__(stream, endpoints, credential, trust_dir, context=context or zmq.asyncio.Context.instance(),
                         **options)
        self._polled = -1

    async def receive(self, timeout: float | None = None) -> Delivered | None:
        """The next verified message, waiting up to ``timeout`` seconds (None: until one arrives); None if time ran out.

        Housekeeping (the receiver's timers, reloading a changed trust directory) runs while it waits.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (wait := self._next_wait(deadline)) is not None:
            if self._polled != self.links.generation:  # a link opened or closed a socket
                self._polled, self._poller = self.links.generation, zmq.asyncio.Poller()
                for sock in self.links.sockets:
                    self._poller.register(sock, zmq.POLLIN)
            if await self._poller.poll(max(1, int(wait * 1000))):
                self._drain()
        return self._ready()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delivered:
        return await self.receive()

    def close(self) -> None:
        """Close the sockets; messages not yet received are dropped."""
        self.mender.close()
        self.links.close()
