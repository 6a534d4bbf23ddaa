"""A reader's links: one SUB socket per endpoint, watched through libzmq's socket monitor (docs/PROTOCOL.md §9).

One socket per endpoint lets the reader take a bounded share from each in
turn (a flood on one path cannot starve another), and tell, per endpoint,
whether it is connected and when its last frame came: what monitoring needs
to alarm on a path that went quiet.

libzmq ends a connection on a protocol error (a message over MAXMSGSIZE, a
malformed greeting) and never reconnects it; :class:`Link` notices
(``DISCONNECTED`` with no retry after it) and connects again, so one bad
message from a relay costs a reconnection, not the path.

libzmq's receive queue counts messages (``RCVHWM``), not bytes.  A link
bounds it in bytes all the same: its socket takes messages up to
``max_frame`` bytes (``MAXMSGSIZE``) and queues ``queue_bytes //
max_frame`` of them, so the queue never holds more than its share.  A new
link takes the largest frames its share allows, in a queue of a few; once it
has seen ``WINDOW`` seconds of frames far smaller (data frames of a few KiB,
announcements of a few hundred), it opens a socket for frames four times
the largest it saw, with a queue of hundreds or more, and reads both: the
old one's frames are handed on as they come, the new one's are held (in
order, bounded in bytes) until the old one brings them too (then dropped)
or closes (then handed on).  So the reader sees the frames in the order
they were sent, however far the old socket lags (:class:`Handover`).  A
publisher or relay applies a connection's subscriptions in the order they
were made, the data topic first: once the new socket has brought a frame
of another topic, what the old one subscribed reaches the new one; once
the old one has brought a data frame the new one brought (or, on a stream
without data, was read and found empty for a while), whatever is left in
the old socket's queue the new one holds or will bring, and the old one
closes.  Nothing is lost or taken twice, however long the subscriptions
take to apply (a relay's gate takes them a few at a time).  A
frame over the smaller bound makes libzmq drop the connection: the link
opens a socket for the largest frames again, and waits twice as long before
it narrows once more.  libzmq 4.3 cannot change the bound of a live
connection safely (a pipe whose high-water mark changes while its writer is
blocked may never wake up), hence a new socket rather than a new option.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .transports import MULTICAST, check_endpoint, connect

log = logging.getLogger("zmqsec.reader")

# How long a dropped connection may go without libzmq retrying it before the reader reconnects itself.
RECONNECT_AFTER = 1.0
_RETRYING = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECTED
_WATCHED = _RETRYING | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
_EVENTS_PER_TURN = 100
# The receive queues of all a reader's links together, in bytes, by default: with the 64 MiB the reader holds
# (ReceiverPolicy.max_held_bytes), 128 MiB in all.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# A link's queue: at most this many frames, however small.
MAX_QUEUED_FRAMES = 100_000
# The smallest frame bound a link narrows to.
MIN_FRAME_BOUND = 256 * 1024
# How long a link looks at its frames before it narrows its bound: first, and at most (it doubles after each
# frame over a narrowed bound).
WINDOW = 2.0
MAX_WINDOW = 300.0
# A narrowed socket takes over once it has been subscribed this long and has proved that it receives the stream;
# an old socket of an idle stream has caught up once read and found empty this long; frames both carried are
# looked for this long after the old one closed.
OVERLAP = 0.5
# Frames taken during a handover are taken once: remembered by digest, this many at most.
_MAX_REMEMBERED = 200_000


_NOBLOCK = int(zmq.NOBLOCK)


def receive(socket: zmq.Socket) -> list[bytes]:
    """One message's parts, without waiting (:class:`zmq.Again` if none is queued).  pyzmq's ``recv_multipart``
    asks libzmq for ``RCVMORE`` through its option machinery, a third of a 1 KiB frame's receive time; a
    received frame carries the flag for nothing.  (The parts of a message arrive together.)"""
    part = socket.recv(_NOBLOCK, copy=False)
    parts = [part.bytes]
    while part.more:
        part = socket.recv(_NOBLOCK, copy=False)
        parts.append(part.bytes)
    return parts


def _digest(parts: list[bytes]) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=16).digest()


class Handover:
    """What a link takes while two sockets carry its frames: the old one, read until it has caught up, and the
    narrower new one.  Frames from the old socket are handed on as they come; frames from the new one are held, in
    order, until the old one brings them too (then dropped: taken once) or the old one closes (then handed on,
    after everything the old one brought).  So the new socket never runs ahead of a lagging old one: the reader
    sees the stream in the order it was sent, as if from one socket.  Once ``hold_bytes`` are held (:attr:`full`)
    the link stops reading the new socket, whose queue then holds back its publisher like any full queue, until
    the old one has caught up.

    A frame is known by a digest of its bytes.  Re-announcements are the same bytes every time: one copy is taken
    for another, which costs nothing (they repeat)."""

    def __init__(self, hold_bytes: int) -> None:
        self.hold_bytes = hold_bytes
        self.control_on_new = False  # the new socket brought a frame other than data: its subscriptions are in effect
        self.old_caught_up = False  # a data frame both brought: nothing older is left in the old socket's queue
        self.closed = False
        self._from_old: set[bytes] = set()  # digests taken from the old socket, this many at most
        self._held: deque[tuple[bytes, list[bytes], int]] = deque()
        self._held_count: Counter[bytes] = Counter()
        self.held_bytes = 0

    @property
    def full(self) -> bool:
        """Are ``hold_bytes`` held (the new socket is not read until the old one brings some)?"""
        return self.held_bytes >= self.hold_bytes and not self.closed

    def from_old(self, parts: list[bytes]) -> list[list[bytes]]:
        """A frame from the old socket: the frames to hand on (the new socket's held ones it passed, then it)."""
        digest, data = _digest(parts), parts[0].endswith(b"\x00D")
        if len(self._from_old) < _MAX_REMEMBERED:
            self._from_old.add(digest)
        out = []
        if data and self._held_count[digest]:  # (other frames may repeat: a re-announcement matches any copy)
            self.old_caught_up = True
            while self._held:  # held frames before it that the old socket never brought (dropped at its queue)
                held, frame = self._pop()
                if held == digest:
                    break
                if held not in self._from_old:
                    out.append(frame)
        out.append(parts)
        return out

    def from_new(self, parts: list[bytes]) -> list[list[bytes]]:
        """A frame from the new socket: the frames to hand on (none while the old socket is read)."""
        digest, data = _digest(parts), parts[0].endswith(b"\x00D")
        self.control_on_new |= not data
        if digest in self._from_old:  # the new socket lags: the old one brought it already
            self.old_caught_up |= data
            return []
        if self.closed:
            return [parts]
        size = sum(map(len, parts))
        self._held.append((digest, parts, size))
        self._held_count[digest] += 1
        self.held_bytes += size
        return []

    def close(self) -> list[list[bytes]]:
        """The old socket closed: the held frames it never brought, in order.  Frames the new socket brings later
        are still looked up among the old socket's (the new one may lag)."""
        self.closed = True
        out = []
        while self._held:
            held, frame = self._pop()
            if held not in self._from_old:
                out.append(frame)
        return out

    def _pop(self) -> tuple[bytes, list[bytes]]:
        digest, frame, size = self._held.popleft()
        self._held_count[digest] -= 1
        if not self._held_count[digest]:
            del self._held_count[digest]
        self.held_bytes -= size
        return digest, frame


def _close(socket: zmq.Socket, monitor: zmq.Socket | None) -> None:
    try:
        socket.disable_monitor()
    except zmq.ZMQError:
        pass
    if monitor is not None:
        monitor.close(0)
    socket.close(0)


class Link:
    """One endpoint's SUB socket (and, while it hands over to a narrower one, the one before) and what its monitor
    said.  ``configure(socket)`` sets a new socket up before it connects (CURVE, LINGER); the link subscribes it to
    ``topics`` and sets its MAXMSGSIZE and RCVHWM from ``queue_bytes``, never above ``largest``."""

    def __init__(self, context: zmq.Context, endpoint: str, configure: Callable[[zmq.Socket], None],
                 topics: list[bytes], queue_bytes: int, largest: int) -> None:
        self.context, self.endpoint, self._configure, self.topics = context, endpoint, configure, topics
        self.queue_bytes = queue_bytes
        self.widest = max(1, min(largest, queue_bytes))  # the frame bound of a new link
        self.multicast = check_endpoint(endpoint) in MULTICAST
        # connecting, connected, disconnected; multicast links have no connection to watch
        self.state = "multicast" if self.multicast else "connecting"
        self.dropped_at: float | None = None  # disconnected, and libzmq has not retried since
        self.last_frame: float | None = None  # wall-clock time of the last message taken from this link
        self.frames = 0
        self.connects = 0
        self.reconnects = 0  # by us, after libzmq gave the connection up (a protocol error)
        self.narrowed = 0  # sockets opened for smaller frames
        self.generation = 0  # counts the sockets opened: pollers watch the current ones
        self._window = WINDOW
        self._window_start: float | None = None
        self._window_largest = self._previous_largest = 0
        self._old: zmq.Socket | None = None  # the socket handing over, read until it is empty
        self._subscribed_at: float | None = None  # the new socket's handshake, during a handover
        self._old_frame_at = self._old_read_at = 0.0
        # During a handover, and for OVERLAP after the old socket closed (the new one may lag behind it).
        self._handover: Handover | None = None
        self._released: list[list[bytes]] = []  # held frames the old socket's close handed on
        self.paused: zmq.Socket | None = None  # the new socket, while the handover's hold is full: not read
        self._closed_at = 0.0
        self.socket, self._monitor = self._open(self.widest)

    def _open(self, max_frame: int) -> tuple[zmq.Socket, zmq.Socket]:
        socket = self.context.socket(zmq.SUB)
        self._configure(socket)
        for topic in self.topics:
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        # libzmq's pgm receiver stalls for good behind a short queue (16 frames did, 100 not): multicast links
        # keep the longest, bounded in frames only (docs/PROTOCOL.md §9.1).
        frames = MAX_QUEUED_FRAMES if self.multicast else max(1, min(MAX_QUEUED_FRAMES, self.queue_bytes // max_frame))
        socket.setsockopt(zmq.MAXMSGSIZE, max_frame)
        socket.setsockopt(zmq.RCVHWM, frames)
        self.max_frame, self.queued_frames = max_frame, frames
        self.generation += 1
        address = f"inproc://zmqsec-link-{id(self)}-{self.generation}"
        socket.monitor(address, _WATCHED)
        monitor = self.context.socket(zmq.PAIR)
        monitor.connect(address)
        connect(socket, self.endpoint)
        return socket, monitor

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The sockets to read: during a handover, the old one until it has closed and the new one (a frame both
        carry is taken once: :meth:`fresh`)."""
        if self._old is None:
            return [self.socket]
        return [self._old] if self.paused is not None else [self._old, self.socket]

    def arrived(self, socket: zmq.Socket, parts: list[bytes]) -> list[list[bytes]]:
        """The frames to hand on now that ``parts`` came from ``socket``: itself, or during a handover none (the
        new socket's frames wait for the old one) or several (:class:`Handover`)."""
        handover = self._handover
        if handover is None:
            return [parts]
        out = handover.from_old(parts) if socket is self._old else handover.from_new(parts)
        if handover.full != (self.paused is not None):  # the new socket is read again, or no longer
            self.paused = self.socket if handover.full else None
            self.generation += 1
        return out

    def released(self) -> list[list[bytes]]:
        """The frames handed on by :meth:`watch` (the new socket's held ones, when the old one closed), once."""
        released, self._released = self._released, []
        return released

    def took(self, socket: zmq.Socket, count: int, largest: int, now: float) -> None:
        """``count`` messages were taken from ``socket`` in a turn (0: it was read and found empty), the largest
        of ``largest`` bytes."""
        if socket is self._old:
            self._old_read_at = now
            self._old_frame_at = now if count else self._old_frame_at
        if not count:
            return
        self.frames += count
        self.last_frame = time.time()
        if self._window_start is None:
            self._window_start = now
        self._window_largest = max(self._window_largest, largest)

    def watch(self, now: float) -> None:
        """Take the monitor's news; reconnect a connection libzmq gave up on; narrow the frame bound, or hand
        over to a narrower socket."""
        for _ in range(_EVENTS_PER_TURN):
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.state, self.dropped_at = "connected", None
                self.connects += 1
                if self._old is not None and self._subscribed_at is None:
                    self._subscribed_at = now
            elif event == zmq.EVENT_DISCONNECTED and not self.multicast:
                self.state, self.dropped_at = "disconnected", now
            elif event & _RETRYING:
                self.dropped_at = None
        if self.dropped_at is not None and now - self.dropped_at >= RECONNECT_AFTER:
            self._reconnect(now)
        elif self._old is not None:
            self._hand_over(now)
        elif self._handover is not None and now - self._closed_at >= OVERLAP:
            self._handover = None  # the new socket's queue holds nothing the old one carried any more
        elif self._window_start is not None and now - self._window_start >= self._window:
            self._narrow(now)

    def _reconnect(self, now: float) -> None:
        self.dropped_at = None
        self.reconnects += 1
        if self.max_frame < self.widest:  # most likely a frame over the narrowed bound: take any frame again
            log.warning("endpoint %s: connection dropped (a frame over the %d bytes this link took lately, or a "
                        "malformed one); connecting again for frames up to %d bytes", self.endpoint, self.max_frame,
                        self.widest)
            self._window = min(MAX_WINDOW, self._window * 2)
            self._close_old()
            self._handover = None
            _close(self.socket, self._monitor)
            self._window_start, self._window_largest = None, 0
            self.state = "connecting"
            self.socket, self._monitor = self._open(self.widest)
            return
        log.warning("endpoint %s: connection dropped and not retried (a protocol error: a message over the "
                    "size bound, or a malformed one); connecting again", self.endpoint)
        try:
            self.socket.disconnect(self.endpoint)
        except zmq.ZMQError:
            pass  # libzmq forgot the endpoint already
        connect(self.socket, self.endpoint)

    def _narrow(self, now: float) -> None:
        """After a window of frames: if four times the largest of this window and the last fits a bound a quarter
        of the current one at most, hand over to a socket with that bound (and a queue four times as long)."""
        largest = max(self._window_largest, self._previous_largest)
        self._previous_largest, self._window_largest, self._window_start = self._window_largest, 0, now
        bound = max(MIN_FRAME_BOUND, 4 * largest)
        if self.multicast or self.state != "connected" or bound * 4 > self.max_frame:
            return  # a multicast link has no dropped connection to tell a frame over the bound by
        self.narrowed += 1
        log.info("endpoint %s: frames of %d bytes at most lately; taking frames up to %d bytes, %d in the queue",
                 self.endpoint, largest, bound, self.queue_bytes // bound)
        self._old = self.socket
        self._old.disable_monitor()
        self._monitor.close(0)
        self._subscribed_at = None
        self._handover = Handover(self.queue_bytes)
        self._old_frame_at = self._old_read_at = now
        self.socket, self._monitor = self._open(bound)  # the link stays connected through the old socket

    def _hand_over(self, now: float) -> None:
        """The old socket closes once the new one has been subscribed for OVERLAP, its subscriptions are in effect
        and the old one has caught up (:class:`Handover`; or was read and found empty for OVERLAP: an idle stream
        sends no data frame).  What the old socket still queues the new one holds or will bring.  With the hold
        full (the new socket not read, so no frame of another topic can show its subscriptions), an old socket
        found empty for OVERLAP has nothing more to bring: it closes too."""
        handover = self._handover
        ready = handover.control_on_new or handover.full
        handover.old_caught_up |= ready and self._old_read_at - self._old_frame_at >= OVERLAP
        if (self._subscribed_at is not None and now - self._subscribed_at >= OVERLAP
                and ready and handover.old_caught_up):
            self._close_old()

    def _close_old(self) -> None:
        if self._old is not None:
            self._old.close(0)
            self._old = None
            self.generation += 1
            self._closed_at = time.monotonic()
            self._released += self._handover.close()
            self.paused = None

    def status(self) -> dict:
        """What the status file shows of this link."""
        last = None if self.last_frame is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_frame))
        return {"state": self.state, "last_frame": last, "frames": self.frames, "connects": self.connects,
                "reconnects": self.reconnects, "max_frame": self.max_frame, "queued_frames": self.queued_frames}

    def close(self) -> None:
        """Close the sockets and the monitor."""
        self._close_old()
        _close(self.socket, self._monitor)


class Links:
    """The reader's links: a SUB socket of ``context`` per endpoint, each set up by ``configure(socket)`` and
    subscribed to ``topics`` before it connects, with an equal share of ``queue_bytes`` for its receive queue;
    ``largest`` is the biggest frame a link takes.  The sockets are blocking ones (an asyncio reader waits on them
    with zmq.asyncio.Poller)."""

    def __init__(self, context: zmq.Context, endpoints: list[str], configure: Callable[[zmq.Socket], None], *,
                 topics: list[bytes], queue_bytes: int, largest: int) -> None:
        if isinstance(context, zmq.asyncio.Context):
            context = zmq.Context.shadow(context.underlying)
        share = queue_bytes // max(1, len(endpoints))
        self.links = [Link(context, endpoint, configure, topics, share, largest) for endpoint in endpoints]

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The SUB sockets to read."""
        return [socket for link in self.links for socket in link.sockets]

    @property
    def generation(self) -> int:
        """Changes whenever a link opens or closes a socket: a poller of :attr:`sockets` is out of date."""
        return sum(link.generation for link in self.links)

    def watch(self, now: float) -> None:
        """Every link's monitor news; reconnect where libzmq gave up; narrow the bounds the frames allow."""
        for link in self.links:
            link.watch(now)

    def released(self) -> list[list[bytes]]:
        """The frames :meth:`watch` handed on (a handover's held frames, when its old socket closed), once."""
        return [parts for link in self.links for parts in link.released()]

    def resubscribe(self, topic: bytes) -> None:
        """Subscribe every socket to ``topic`` anew: the publisher sees a new subscription (through relays too)."""
        for link in self.links:
            for socket in {id(s): s for s in (link.socket, *link.sockets)}.values():
                socket.setsockopt(zmq.UNSUBSCRIBE, topic)
                socket.setsockopt(zmq.SUBSCRIBE, topic)

    def status(self) -> dict:
        """Each endpoint's connection state and last frame, for the status file."""
        return {link.endpoint: link.status() for link in self.links}

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()
