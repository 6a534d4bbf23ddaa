"""A relay: forwards a stream's frames, announcements and checkpoints unchanged, holding no key.

A loop takes at most DRAIN frames from upstream per turn and sends them on,
then what the subscription gate (:mod:`.gate`) lets through: only zmqsec's
subscriptions (a connection holding too many is cut).

The relay subscribes upstream itself, to the configured streams (default:
everything), and filters per reader downstream.  A reader's subscription
travels upstream only as a subscription withdrawn at once (the XPUB side is
verbose, so every new subscriber reaches the publisher, which re-announces
the current key at once): nothing a reader, or a stranger, subscribes to
stays in the relay's upstream connection, so a publisher's per-connection
bound never cuts a relay.  On outputs where subscriptions are invisible
(epgm://, norm://) late joiners rely on the publisher's periodic
re-announcement.  Relays chain into trees.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from zmqsec.errors import ZmqsecError

from zmqsec.machines.subscriptions import MAX_SUBSCRIPTIONS_PER_CONNECTION, SUBSCRIBE, UNSUBSCRIBE
from zmqsec.protocol.frames import relayable
from zmqsec.protocol.primitives import MAX_ANNOUNCEMENT_FRAME, MAX_XPUB_MESSAGE

from . import gate
from .curve import CurveClient, CurveServer, apply_client, apply_server
from .gate import SubscriptionGate
from .journal import Journal, JournalError
from .refusals import RefusalLog
from .replay import ReplayServer
from .transports import DEFAULT_MULTICAST_RATE, bind, connect

log = logging.getLogger("zmqsec.relay")

DRAIN = 1000  # frames taken from upstream per turn
ARCHIVE_COMMIT = 0.05  # seconds between commits of an archive relay's journal

class Relay:
    """Forwards everything from ``inputs`` (connected) to ``outputs`` (bound), unchanged and holding no key.

    The sockets are bound and connected on construction; :meth:`start` begins
    forwarding.  ``streams`` limits it to those streams' prefixes.
    """

    def __init__(self, inputs: list[str], outputs: list[str], *, streams: list[str] = (),
                 context: zmq.Context | None = None, hwm: int = 100_000, curve_out: CurveServer | None = None,
                 curve_in: CurveClient | None = None, multicast_rate: int = DEFAULT_MULTICAST_RATE,
                 journal: Journal | None = None, replay_endpoints: list[str] = (),
                 max_subscriptions: int = MAX_SUBSCRIPTIONS_PER_CONNECTION) -> None:
        self._ctx = context or zmq.Context.instance()
        self.journal = journal
        self.stats: collections.Counter = collections.Counter()
        self.upstream = self._ctx.socket(zmq.XSUB)
        self.downstream = self._ctx.socket(zmq.XPUB)
        self.downstream.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscription and unsubscription (the gate counts them)
        for sock in (self.upstream, self.downstream):
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.LINGER, 0)
        self.downstream.setsockopt(zmq.RCVHWM, gate.rcvhwm(bool(curve_out and curve_out.clients is not None)))
        self.downstream.setsockopt(zmq.RATE, multicast_rate)  # kbit/s, multicast outputs only
        # An oversized message drops that one connection, not the process (docs/PROTOCOL.md §9).
        self.downstream.setsockopt(zmq.MAXMSGSIZE, MAX_XPUB_MESSAGE)
        self.upstream.setsockopt(zmq.MAXMSGSIZE, MAX_ANNOUNCEMENT_FRAME + 4096)
        if curve_in:
            apply_client(self.upstream, curve_in)
        self._release_curve = apply_server(self.downstream, curve_out) if curve_out else None
        for endpoint in outputs:
            bind(self.downstream, endpoint)
        for endpoint in inputs:
            connect(self.upstream, endpoint)
        # We subscribe upstream ourselves, to whole streams; what readers subscribe to travels upstream only as
        # a subscription withdrawn at once, which makes the publisher re-announce and leaves no state upstream.
        self._own = [s.encode() + b"\x00" for s in streams] or [b""]
        for prefix in self._own:
            self.upstream.send(SUBSCRIBE + prefix)
        names = [s.encode() for s in streams]
        self.refusals = RefusalLog(log, "relay")
        self.gate = SubscriptionGate(self.downstream, lambda prefix: relayable(prefix, names), self.refusals,
                                     limit=max_subscriptions)
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
            self._forward(control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close()

    def _forward(self, control: zmq.Socket) -> None:
        """Forward frames downstream and zmqsec's subscriptions upstream, at most DRAIN frames and
        ``gate.drain`` subscription messages per turn (docs/PROTOCOL.md §9.1); an archive relay records every
        frame that passes into its journal (§10.6), committed every 50 ms."""
        poller = zmq.Poller()
        for sock in (self.upstream, self.downstream, control):
            poller.register(sock, zmq.POLLIN)
        journal, recv, send = self.journal, self.upstream.recv_multipart, self.downstream.send_multipart
        next_commit = next_expiry = next_flush = time.monotonic()
        while True:
            ready = dict(poller.poll(50))
            if control in ready:
                break
            if self.upstream in ready:
                forwarded = 0
                for forwarded in range(1, DRAIN + 1):
                    try:
                        parts = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        forwarded -= 1
                        break
                    send(parts)
                    if journal is not None:
                        journal.add_parts(parts)
                self.stats["forwarded"] += forwarded
            if self.downstream in ready:
                for message in self.gate.take():
                    if message[:1] == SUBSCRIBE and message[1:] not in self._own:
                        self.upstream.send(message)
                        self.upstream.send(UNSUBSCRIBE + message[1:])
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + 1.0
                self.refusals.flush()
            if journal is None:
                continue
            if now >= next_commit:
                next_commit = now + ARCHIVE_COMMIT
                self._commit()
            if now >= next_expiry:
                next_expiry = now + min(60.0, journal.max_age / 4)
                try:
                    journal.expire()
                except JournalError as exc:
                    log.error("%s", exc)
        if journal is not None:
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

    def status(self) -> dict:
        """The relay's figures for its status file (read from another thread: a snapshot of counters)."""
        return {"forwarded": self.stats["forwarded"], "archive_dropped": self.stats["archive-dropped"],
                "rejected": self.gate.rejected(), "replay": dict(self.replay.stats) if self.replay else None}

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
        self.gate.close()
        for sock in (self._control, self.upstream, self.downstream):
            sock.close()
        if self._release_curve is not None:
            self._release_curve()
