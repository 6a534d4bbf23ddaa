"""A relay: forwards a stream's frames, announcements and checkpoints unchanged, holding no key.

libzmq's own proxy (XSUB -> XPUB, in C) moves the messages; Python only sets
the sockets up and waits for a stop.  Subscriptions travel upstream (the XPUB
side is verbose, so every new subscriber reaches the publisher, which then
re-announces the current key at once).  On outputs where subscriptions are
invisible (epgm://, norm://) the relay subscribes upstream itself to the
configured stream prefixes, and late joiners rely on the publisher's periodic
re-announcement.  Relays chain into trees.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from zmqsec.errors import ZmqsecError

from .curve import CurveClient, CurveServer, apply_client, apply_server
from zmqsec.protocol.primitives import MAX_ANNOUNCEMENT_FRAME, MAX_XPUB_MESSAGE
from .journal import Journal, JournalError
from .replay import ReplayServer
from .transports import DEFAULT_MULTICAST_RATE, MULTICAST, bind, check_endpoint, connect

log = logging.getLogger("zmqsec.relay")

DRAIN = 1000  # messages taken from a socket per turn
ARCHIVE_COMMIT = 0.05  # seconds between commits of an archive relay's journal

class Relay:
    """Forwards everything from ``inputs`` (connected) to ``outputs`` (bound), unchanged and holding no key.

    The sockets are bound and connected on construction; :meth:`start` begins
    forwarding.  ``streams`` limits it to those streams' prefixes.
    """

    def __init__(self, inputs: list[str], outputs: list[str], *, streams: list[str] = (),
                 context: zmq.Context | None = None, hwm: int = 100_000, curve_out: CurveServer | None = None,
                 curve_in: CurveClient | None = None, multicast_rate: int = DEFAULT_MULTICAST_RATE,
                 journal: Journal | None = None, replay_endpoints: list[str] = ()) -> None:
        self._ctx = context or zmq.Context.instance()
        self.journal = journal
        self.stats: collections.Counter = collections.Counter()
        self.upstream = self._ctx.socket(zmq.XSUB)
        self.downstream = self._ctx.socket(zmq.XPUB)
        self.downstream.setsockopt(zmq.XPUB_VERBOSE, 1)
        for sock in (self.upstream, self.downstream):
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.LINGER, 0)
        self.downstream.setsockopt(zmq.RATE, multicast_rate)  # kbit/s, multicast outputs only
        # An oversized message drops that one connection, not the process (docs/PROTOCOL.md §9).
        self.downstream.setsockopt(zmq.MAXMSGSIZE, MAX_XPUB_MESSAGE)
        self.upstream.setsockopt(zmq.MAXMSGSIZE, MAX_ANNOUNCEMENT_FRAME + 4096)
        if curve_in:
            apply_client(self.upstream, curve_in)
        self._release_curve = apply_server(self.downstream, curve_out) if curve_out else None
        schemes = {check_endpoint(e) for e in outputs}
        for endpoint in outputs:
            bind(self.downstream, endpoint)
        for endpoint in inputs:
            connect(self.upstream, endpoint)
        if schemes & set(MULTICAST) or streams or journal is not None:
            # Nobody downstream can tell us what to subscribe to (or an archive keeps everything): subscribe ourselves.
            prefixes = [s.encode() + b"\x00" for s in streams] or [b""]
            for prefix in prefixes:
                self.upstream.send(b"\x01" + prefix)
        self._control = self._ctx.socket(zmq.PAIR)
        self._control_addr = f"inproc://zmqsec-relay-{id(self)}"
        self._control.bind(self._control_addr)
        self._thread: threading.Thread | None = None
        self.replay = None
        if replay_endpoints:
            if journal is None:
                raise ZmqsecError("a relay's replay endpoint serves its journal: give --journal DIR too")
            self.replay = ReplayServer(journal.directory, list(replay_endpoints), context=self._ctx,
                                       curve=curve_out).start()

    def _run(self) -> None:
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_addr)
        try:
            if self.journal is None:
                zmq.proxy_steerable(self.upstream, self.downstream, None, control)
            else:
                self._archive(control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close()

    def _archive(self, control: zmq.Socket) -> None:
        """Forward as the proxy does, and record every frame that passes into the journal (docs/PROTOCOL.md
        §10.6): committed every 50 ms, at most DRAIN messages per socket and turn."""
        poller = zmq.Poller()
        for sock in (self.upstream, self.downstream, control):
            poller.register(sock, zmq.POLLIN)
        next_commit = next_expiry = time.monotonic()
        while True:
            ready = dict(poller.poll(50))
            if control in ready:
                break
            if self.upstream in ready:
                for _ in range(DRAIN):
                    try:
                        parts = self.upstream.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    self.downstream.send_multipart(parts)
                    self.journal.add_parts(parts)
            if self.downstream in ready:
                for _ in range(DRAIN):
                    try:
                        self.upstream.send(self.downstream.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + ARCHIVE_COMMIT
                self._commit()
            if now >= next_expiry:
                next_expiry = now + min(60.0, self.journal.max_age / 4)
                try:
                    self.journal.expire()
                except JournalError as exc:
                    log.error("%s", exc)
        self._commit()

    def _commit(self) -> None:
        try:
            self.journal.commit()
        except JournalError as exc:
            # The archive is a convenience beside the publisher's journal: drop this batch, keep forwarding.
            self.stats["archive-dropped"] += self.journal.pending
            self.journal.discard()
            log.error("%s; %d frame(s) not archived (the publisher's journal still has them)", exc,
                      self.stats["archive-dropped"])

    def start(self) -> "Relay":
        """Start forwarding in a daemon thread; returns the relay itself."""
        self._thread = threading.Thread(target=self._run, name="zmqsec-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop forwarding (waiting up to 5 s for the thread) and close the sockets; a stopped relay cannot restart."""
        if self._thread is not None:
            self._control.send(b"TERMINATE")
            self._thread.join(5)
        if self.replay is not None:
            self.replay.stop()
        for sock in (self._control, self.upstream, self.downstream):
            sock.close()
        if self._release_curve is not None:
            self._release_curve()
