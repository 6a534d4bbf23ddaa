"""A reader's links: one SUB socket per endpoint, watched through libzmq's socket monitor (docs/PROTOCOL.md §9).

One socket per endpoint lets the reader take a bounded share from each in
turn (a flood on one path cannot starve another), and tell, per endpoint,
whether it is connected and when its last frame came: what monitoring needs
to alarm on a path that went quiet.

libzmq ends a connection on a protocol error (a message over MAXMSGSIZE, a
malformed greeting) and never reconnects it; :class:`Link` notices
(``DISCONNECTED`` with no retry after it) and connects again, so one bad
message from a relay costs a reconnection, not the path.
"""

from __future__ import annotations

import logging
import time
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


class Link:
    """One endpoint's SUB socket and what its monitor said."""

    def __init__(self, socket: zmq.Socket, endpoint: str) -> None:
        self.socket, self.endpoint = socket, endpoint
        # connecting, connected, disconnected; multicast links have no connection to watch
        self.state = "multicast" if check_endpoint(endpoint) in MULTICAST else "connecting"
        self.dropped_at: float | None = None  # disconnected, and libzmq has not retried since
        self.last_frame: float | None = None  # wall-clock time of the last message taken from this link
        self.frames = 0
        self.connects = 0
        self.reconnects = 0  # by us, after libzmq gave the connection up (a protocol error)
        address = f"inproc://zmqsec-link-{id(self)}"
        socket.monitor(address, _WATCHED)
        self._monitor = socket.context.socket(zmq.PAIR)
        self._monitor.connect(address)
        connect(socket, endpoint)

    def watch(self, now: float) -> None:
        """Take the monitor's news; reconnect a connection libzmq gave up on."""
        for _ in range(_EVENTS_PER_TURN):
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.state, self.dropped_at = "connected", None
                self.connects += 1
            elif event == zmq.EVENT_DISCONNECTED and self.state != "multicast":
                self.state, self.dropped_at = "disconnected", now
            elif event & _RETRYING:
                self.dropped_at = None
        if self.dropped_at is not None and now - self.dropped_at >= RECONNECT_AFTER:
            self.dropped_at = None
            self.reconnects += 1
            log.warning("endpoint %s: connection dropped and not retried (a protocol error: a message over the "
                        "size bound, or a malformed one); connecting again", self.endpoint)
            try:
                self.socket.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # libzmq forgot the endpoint already
            connect(self.socket, self.endpoint)

    def took(self, count: int) -> None:
        """``count`` messages were taken from this link."""
        self.frames += count
        self.last_frame = time.time()

    def status(self) -> dict:
        """What the status file shows of this link."""
        last = None if self.last_frame is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_frame))
        return {"state": self.state, "last_frame": last, "frames": self.frames, "connects": self.connects,
                "reconnects": self.reconnects}

    def close(self) -> None:
        """Close the socket and its monitor."""
        self.socket.disable_monitor()
        self._monitor.close()
        self.socket.close()


class Links:
    """The reader's links: a SUB socket of ``context`` per endpoint, each set up by ``configure(socket)`` before it
    connects.  The sockets are blocking ones (an asyncio reader waits on them with zmq.asyncio.Poller)."""

    def __init__(self, context: zmq.Context, endpoints: list[str], configure: Callable[[zmq.Socket], None]) -> None:
        if isinstance(context, zmq.asyncio.Context):
            context = zmq.Context.shadow(context.underlying)
        self.links: list[Link] = []
        for endpoint in endpoints:
            socket = context.socket(zmq.SUB)
            configure(socket)
            self.links.append(Link(socket, endpoint))

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The SUB sockets, one per endpoint."""
        return [link.socket for link in self.links]

    def watch(self, now: float) -> None:
        """Every link's monitor news; reconnect where libzmq gave up."""
        for link in self.links:
            link.watch(now)

    def status(self) -> dict:
        """Each endpoint's connection state and last frame, for the status file."""
        return {link.endpoint: link.status() for link in self.links}

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()
