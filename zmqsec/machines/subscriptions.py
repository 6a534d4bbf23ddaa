"""Which subscription messages a publisher or a relay takes from its peers (docs/PROTOCOL.md §9.1).

An XPUB socket hands us every subscription message with the connection it
came from.  libzmq keeps each distinct subscription of a connection until the
connection closes and offers no limit of its own, so the book counts them per
connection: past ``limit`` distinct ones, the connection is to be cut (which
frees them).  A subscription is zmqsec's if ``accepts`` says so; others are
foreign, counted as refusals and never passed on.

Pure bookkeeping: connections are numbers (the driver uses file descriptors).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

SUBSCRIBE, UNSUBSCRIBE = b"\x01", b"\x00"
MAX_SUBSCRIPTIONS_PER_CONNECTION = 4096  # far above a relay's (stream kinds + one topic per reader group)


class Verdict(Enum):
    """What to do with one subscription message."""

    PASS = "pass"  # a zmqsec (un)subscription: act on it (re-announce, forward upstream)
    FOREIGN = "foreign"  # not zmqsec's: count it as a refusal, pass nothing on
    CUT = "cut"  # this connection holds ``limit`` distinct subscriptions already: close it


class SubscriptionBook:
    """The distinct subscriptions of each connection, and the verdict on each new message."""

    def __init__(self, accepts: Callable[[bytes], bool], limit: int = MAX_SUBSCRIPTIONS_PER_CONNECTION) -> None:
        if limit < 1:
            raise ValueError("a connection must be allowed at least one subscription")
        self.accepts, self.limit = accepts, limit
        self._held: dict[int, set[bytes]] = {}

    def opened(self, connection: int) -> None:
        """A new connection under this number (a reused number starts afresh)."""
        self._held[connection] = set()

    def closed(self, connection: int) -> None:
        """The connection is gone, and libzmq dropped its subscriptions."""
        self._held.pop(connection, None)

    def held(self, connection: int) -> int:
        """How many distinct subscriptions the connection holds."""
        return len(self._held.get(connection, ()))

    def take(self, connection: int | None, message: bytes) -> Verdict:
        """The verdict on ``message`` from ``connection`` (None where the transport has no connections)."""
        kind, prefix = message[:1], message[1:]
        if kind not in (SUBSCRIBE, UNSUBSCRIBE):
            return Verdict.FOREIGN
        held = None if connection is None else self._held.setdefault(connection, set())
        if kind == UNSUBSCRIBE:
            if held is not None:
                held.discard(prefix)
        elif held is not None and prefix not in held:
            if len(held) >= self.limit:
                return Verdict.CUT
            held.add(prefix)
        return Verdict.PASS if self.accepts(prefix) else Verdict.FOREIGN


SHUT_OUT_FIRST = 1.0  # seconds an address is shut out after its first connection cut
SHUT_OUT_MAX = 60.0  # the longest period; each cut within FORGIVEN of the last period's end doubles it
FORGIVEN = 60.0  # seconds after a period ends without a cut, after which the address starts afresh


class ShutOut:
    """Addresses whose connection was cut, and until when a new connection from them is closed on arrival.

    A cut connection's peer (libzmq's XSUB, say) connects again at once and sends everything it ever
    subscribed to again, as fast as it can, and libzmq takes it into its subscription trie faster than the
    gate can count it (a relay flooded so on 2 cores grew by 500 MB in 30 s).  Closing its connections on
    arrival for a while, doubling while it goes on, stops that.  Connections already open are not touched;
    a new one from an honest peer behind the same address (a NAT) is closed too while the period lasts.
    """

    def __init__(self, first: float = SHUT_OUT_FIRST, longest: float = SHUT_OUT_MAX, forgiven: float = FORGIVEN) -> None:
        self.first, self.longest, self.forgiven = first, longest, forgiven
        self._until: dict[str, tuple[float, float]] = {}  # address -> (shut out until, period)

    def cut(self, address: str, now: float) -> float:
        """A connection from ``address`` was cut at ``now``: returns the period it is shut out for."""
        until, period = self._until.get(address, (0.0, 0.0))
        period = min(2 * period, self.longest) if period and now < until + self.forgiven else self.first
        self._until[address] = (now + period, period)
        return period

    def shut(self, address: str, now: float) -> bool:
        """Whether a new connection from ``address`` is to be closed at ``now``."""
        entry = self._until.get(address)
        return entry is not None and now < entry[0]

    def forget(self, now: float) -> None:
        """Drop the addresses forgiven by ``now`` (the table holds only recent offenders)."""
        self._until = {a: e for a, e in self._until.items() if now < e[0] + self.forgiven}

    def __len__(self) -> int:
        return len(self._until)
