"""The gate of an XPUB socket: which subscriptions a publisher or relay takes from its peers (docs/PROTOCOL.md §9.1).

Each turn takes at most ``drain`` messages, so a subscription flood cannot
stop publishing or forwarding.  A message's connection is its source file
descriptor (libzmq's ``ZMQ_SRCFD``); the socket monitor says when one opens
and closes.  zmqsec's subscriptions are passed on, each distinct message once
per connection and turn; others are counted [``bad-subscription``] and logged once in a while.
A connection that sends more distinct subscriptions than the limit is shut
down [``too-many-subscriptions``]: libzmq then drops it with everything it
subscribed, which is the only way to give that memory back.  Its address is
then shut out for a while (:class:`ShutOut`): a new connection from it is
closed as soon as the monitor reports it [``shut-out``], before the peer can
send its whole subscription set again.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdsocket
import time
from collections.abc import Callable, Iterator

import zmq
from zmq.utils.monitor import parse_monitor_message

from zmqsec.errors import RejectReason
from zmqsec.machines.subscriptions import MAX_SUBSCRIPTIONS_PER_CONNECTION, ShutOut, SubscriptionBook, Verdict

from .refusals import RefusalLog

DRAIN = 10_000  # subscription messages taken per turn at most (a few µs each)
# libzmq moves what a connection sent from its pipe into the socket's own queue and subscription trie, which
# have no bound, each time it processes commands (every 100 receives, every poll), and keeps moving while its
# I/O thread refills the pipe.  A pipe of one message makes the two take turns: one message per connection and
# look, so a flood waits in TCP and not in our memory; none is dropped.  (On 2 cores, with two local strangers
# sending distinct subscriptions for 8 s, a relay grew by 5 MB with 1, by 100 MB with 2 and by 170 MB with 4 (its
# gate took 100,000 a second and fell ever further behind).)
RCVHWM = 1  # the XPUB's RCVHWM: set it before the socket binds (rcvhwm())
# Behind a ZAP handler (CURVE admitting listed clients only), libzmq 4.3 never hands over what a connection sends
# through a pipe of one: 2 there, where ZAP has refused strangers before they could send anything.
RCVHWM_ZAP = 2
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_EVENTS_PER_TURN = 1000


def rcvhwm(admitting_listed_clients: bool) -> int:
    """The RCVHWM of an XPUB whose subscriptions a gate takes."""
    return RCVHWM_ZAP if admitting_listed_clients else RCVHWM


def _source(frame: zmq.Frame) -> int:
    """The connection (file descriptor) a message came from; -1 for one libzmq made itself (an unsubscription
    when a connection closed) or a transport without connections."""
    try:
        return frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return -1


def _peer(frame: zmq.Frame) -> str:
    """The address a message came from (an IP address over tcp, empty over ipc)."""
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError:
        return ""


@contextlib.contextmanager
def _connection(fd: int) -> Iterator[stdsocket.socket | None]:
    """The socket behind libzmq's descriptor ``fd`` (a duplicate, closed on exit), or None if it is not one."""
    try:
        dup = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        sock = stdsocket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        yield None
        return
    with sock:
        yield sock


class SubscriptionGate:
    """Takes what the peers of the XPUB ``socket`` send: see the module docstring."""

    def __init__(self, socket: zmq.Socket, accepts: Callable[[bytes], bool], refusals: RefusalLog, *,
                 limit: int = MAX_SUBSCRIPTIONS_PER_CONNECTION, drain: int = DRAIN) -> None:
        self.socket, self.refusals, self.drain = socket, refusals, drain
        self.book = SubscriptionBook(accepts, limit)
        self.foreign = 0  # subscription messages that were not zmqsec's
        self.cut = 0  # connections shut down for holding too many subscriptions
        self._open: set[int] = set()  # accepted connections (file descriptors) libzmq has not closed
        self._cutting: set[int] = set()  # shut down, not yet reported closed
        self.shut_out = ShutOut()
        self.refused_on_arrival = 0  # connections closed on arrival, from an address shut out
        self._forget_at = 0.0
        address = f"inproc://zmqsec-gate-{id(self)}"
        socket.monitor(address, _EVENTS)
        self._monitor = socket.context.socket(zmq.PAIR)
        self._monitor.connect(address)

    def take(self) -> list[bytes]:
        """One turn: the zmqsec subscription messages (``0x01``/``0x00`` ‖ prefix) that arrived, in order of
        arrival, once per connection that sent them; every other message is counted, and over-subscribed
        connections are cut."""
        self._watch()
        passed: list[bytes] = []
        seen: set[tuple[int, bytes]] = set()
        foreign, last_foreign = 0, b""
        recv, take = self.socket.recv, self.book.take
        for _ in range(self.drain):
            try:
                frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            message, connection = frame.bytes, _source(frame)
            if (connection, message) in seen:  # a flood of one subscription costs one lookup
                continue
            seen.add((connection, message))
            verdict = take(connection if connection >= 0 else None, message)
            if verdict is Verdict.PASS:
                passed.append(message)
            elif verdict is Verdict.FOREIGN:
                foreign += 1
                last_foreign = message
            elif connection not in self._cutting:
                self._watch()  # a descriptor closed meanwhile must not be shut down under its next owner
                self._cut(connection, _peer(frame))
        if foreign:  # libzmq applied them (they match none of our topics): counted, logged once in a while
            self.foreign += foreign
            self.refusals.refused(RejectReason.BAD_SUBSCRIPTION, f"{len(last_foreign) - 1}-byte subscription "
                                  f"{last_foreign[1:41]!r}", foreign)
        return passed

    def rejected(self) -> dict[str, int]:
        """The refusal counters, for a status file."""
        counts = {RejectReason.BAD_SUBSCRIPTION: self.foreign, RejectReason.TOO_MANY_SUBSCRIPTIONS: self.cut,
                  RejectReason.SHUT_OUT: self.refused_on_arrival}
        return {str(reason): count for reason, count in counts.items() if count}

    def _cut(self, connection: int, peer: str) -> None:
        """Shut the connection's descriptor down (libzmq sees it end), if it is still that connection's, and
        shut its address out for a while."""
        if connection < 0 or connection in self._cutting:
            return
        with _connection(connection) as sock:
            if sock is None:
                return
            try:
                if sock.family in (stdsocket.AF_INET, stdsocket.AF_INET6):
                    if sock.getpeername()[0] != peer:
                        return  # the descriptor is somebody else's by now
                elif connection not in self._open:
                    return  # ipc: only a connection the monitor saw accepted
                sock.shutdown(stdsocket.SHUT_RDWR)
            except OSError:
                return
        self._cutting.add(connection)
        self.cut += 1
        period = f"; {peer} shut out for {self.shut_out.cut(peer, time.monotonic()):.0f} s" if peer else ""
        self.refusals.refused(RejectReason.TOO_MANY_SUBSCRIPTIONS, f"a connection from {peer or 'a local peer'} "
                              f"sent more than {self.book.limit} distinct subscriptions; connection closed{period}")

    def _refuse_if_shut_out(self, connection: int, now: float) -> None:
        """Close a connection just accepted from an address that is shut out."""
        if not len(self.shut_out):
            return
        with _connection(connection) as sock:
            if sock is None or sock.family not in (stdsocket.AF_INET, stdsocket.AF_INET6):
                return
            try:
                peer = sock.getpeername()[0]
                if not self.shut_out.shut(peer, now):
                    return
                sock.shutdown(stdsocket.SHUT_RDWR)
            except OSError:
                return
        self._cutting.add(connection)
        self.refused_on_arrival += 1
        self.refusals.refused(RejectReason.SHUT_OUT, f"a connection from {peer}, shut out after a connection cut "
                              "for too many subscriptions; closed on arrival")

    def _watch(self) -> None:
        """Take the monitor's news of connections opened and closed."""
        now = time.monotonic()
        if now >= self._forget_at:
            self._forget_at = now + 10.0
            self.shut_out.forget(now)
        for _ in range(_EVENTS_PER_TURN):
            try:
                message = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            fd = message["value"]
            if message["event"] == zmq.EVENT_ACCEPTED:
                self._open.add(fd)
                self._cutting.discard(fd)
                self.book.opened(fd)
                self._refuse_if_shut_out(fd, now)
            else:
                self._open.discard(fd)
                self._cutting.discard(fd)
                self.book.closed(fd)

    def close(self) -> None:
        """Stop watching the socket (call before closing it)."""
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close()
