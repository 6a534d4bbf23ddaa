"""One small adapter over stomp.py: failover, backoff, heart-beats, TLS, receipts by id.

stomp.py calls its listener on its own receiver thread; here that listener
only queues frames and signals receipts, so no work (and no exception of ours)
ever runs inside the callback.  Everything else happens in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import stomp
from stomp.exception import ConnectFailedException, NotConnectedException, StompException

from zmqsec.errors import ZmqsecError

log = logging.getLogger("zmqsec.stomp")


class BrokerUnavailable(ZmqsecError):
    """No broker in the list accepted a connection (or the connection was lost)."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to reach the broker(s): tried in order, with backoff between rounds."""

    hosts: tuple[tuple[str, int], ...]
    use_ssl: bool = False
    cert: Path | None = None  # TLS client certificate (the host/bridge certificate)
    key: Path | None = None
    ca_certs: Path | None = None  # CA bundle file for the broker's certificate
    login: str | None = None
    passcode: str | None = None
    heartbeat_ms: int = 10_000
    vhost: str | None = None
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @staticmethod
    def parse_hosts(text_items) -> tuple[tuple[str, int], ...]:
        """``HOST:PORT`` strings (IPv6 hosts in brackets) as (host, port) pairs.

        Raises :class:`ValueError` if one is malformed or none is given.
        """
        hosts = []
        for item in text_items:
            host, sep, port = item.strip().rpartition(":")
            if not sep or not port.isdigit() or not host:
                raise ValueError(f"broker {item!r} is not HOST:PORT")
            hosts.append((host.strip("[]"), int(port)))
        if not hosts:
            raise ValueError("no broker given")
        return tuple(hosts)


@dataclass
class Frame:
    """A MESSAGE frame from the broker, copied out of stomp.py's receiver thread; the body always bytes."""

    headers: dict
    body: bytes


class _Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: queue.Queue[Frame] = queue.Queue()
        self.receipts: set[str] = set()
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.connected = False

    def on_connected(self, frame) -> None:
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        self.on_disconnected()

    def on_receipt(self, frame) -> None:
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_error(self, frame) -> None:
        with self.cond:
            self.errors.append(frame.headers.get("message", "") or str(frame.body)[:200])
            self.cond.notify_all()

    def on_message(self, frame) -> None:
        body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
        self.messages.put(Frame(dict(frame.headers), body))


class Backoff:
    """Exponential backoff with jitter between reconnection rounds."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = initial
        self.next_try = 0.0

    def due(self, now: float) -> bool:
        """May the next round start?"""
        return now >= self.next_try

    def failed(self, now: float) -> None:
        """A round failed: wait longer before the next (up to ``maximum``)."""
        self.next_try = now + self.delay * (0.5 + random.random())
        self.delay = min(self.delay * 2, self.maximum)

    def succeeded(self) -> None:
        """Connected: the next failure starts from ``initial`` again."""
        self.delay, self.next_try = self.initial, 0.0


@dataclass
class StompLink:
    """A connection to the first broker that answers; reconnects on demand."""

    settings: BrokerSettings
    subscriptions: list[tuple[str, str]] = field(default_factory=list)  # (destination, ack mode)
    _conn: stomp.Connection | None = field(default=None, init=False)
    _listener: _Listener = field(default_factory=_Listener, init=False)
    current: tuple[str, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)

    @property
    def connected(self) -> bool:
        """Is the connection up (as far as the listener knows)?"""
        return self._conn is not None and self._listener.connected and self._conn.is_connected()

    def _open(self, host: str, port: int) -> stomp.Connection:
        s = self.settings
        conn = stomp.Connection([(host, port)], heartbeats=(s.heartbeat_ms, s.heartbeat_ms), vhost=s.vhost,
                                auto_decode=False, reconnect_attempts_max=1, timeout=s.connect_timeout)
        if s.use_ssl:
            conn.set_ssl(for_hosts=[(host, port)], key_file=str(s.key) if s.key else None,
                         cert_file=str(s.cert) if s.cert else None, ca_certs=str(s.ca_certs) if s.ca_certs else None)
        self._listener = _Listener()
        conn.set_listener("zmqsec", self._listener)
        conn.connect(s.login, s.passcode, wait=True)
        # stomp.py returns once the CONNECTED frame is in, but may tell its listeners a moment later: until
        # then a receipt wait would take the connection for lost (seen: "connection lost while waiting for
        # receipts" on the first window after a connect).
        self._listener.on_connected(None)
        return conn

    def connect(self) -> None:
        """One round over the broker list: connect to the first that answers, or raise :class:`BrokerUnavailable`.

        Callers own the backoff between rounds (see :class:`Backoff`) so that they
        can keep doing other work -- a bridge keeps reading its stream meanwhile.
        """
        self.close()
        for host, port in self.settings.hosts:
            try:
                self._conn = self._open(host, port)
            except (ConnectFailedException, StompException, OSError) as exc:
                log.warning("broker %s:%d unavailable (%s)", host, port, exc.__class__.__name__)
                self._conn = None
                continue
            self.current = (host, port)
            log.info("connected to broker %s:%d%s", host, port, " over TLS" if self.settings.use_ssl else "")
            for destination, ack in self.subscriptions:
                self._conn.subscribe(destination, id=destination, ack=ack)
            return
        raise BrokerUnavailable("no broker answered: " + ", ".join(f"{h}:{p}" for h, p in self.settings.hosts))

    def ensure_connected(self, now: float) -> bool:
        """Connected, or one connection round when the backoff allows it: the one reconnect loop of
        both bridges, which keep doing their other work between rounds.  True when connected."""
        if self.connected:
            return True
        if not self.backoff.due(now):
            return False
        try:
            self.connect()
        except BrokerUnavailable as exc:
            self.backoff.failed(now)
            log.warning("%s", exc)
            return False
        self.backoff.succeeded()
        return True

    def failed(self, now: float) -> None:
        """The connection is no good (lost mid-send, a store failed): drop it and back off."""
        self.close()
        self.backoff.failed(now)

    def subscribe(self, destination: str, ack: str = "client-individual") -> None:
        """Subscribe now (if connected) and again after every reconnection."""
        self.subscriptions.append((destination, ack))
        if self.connected:
            self._conn.subscribe(destination, id=destination, ack=ack)

    def send(self, destination: str, body: bytes, headers: dict[str, str], receipt: str) -> None:
        """Send one frame asking for a RECEIPT; call :meth:`wait_receipts` to learn which arrived."""
        try:
            self._conn.send(destination, body, headers={**headers, "receipt": receipt})
        except (NotConnectedException, StompException, OSError, AttributeError) as exc:
            raise BrokerUnavailable(f"send failed: {exc.__class__.__name__}") from None

    def send_transaction(self, destination: str, items: list[tuple[bytes, dict[str, str]]], receipt: str) -> None:
        """Send ``items`` (body, headers) as one STOMP transaction whose COMMIT asks for ``receipt``: the broker
        stores them all with one commit, or none (it aborts a transaction whose connection drops first).
        Call :meth:`wait_receipts` to learn whether the commit arrived."""
        transaction = f"tx/{receipt}"
        try:
            self._conn.begin(transaction=transaction)
            for body, headers in items:
                self._conn.send(destination, body, headers={**headers, "transaction": transaction})
            self._conn.commit(transaction=transaction, headers={"receipt": receipt})
        except (NotConnectedException, StompException, OSError, AttributeError) as exc:
            raise BrokerUnavailable(f"send failed: {exc.__class__.__name__}") from None

    def wait_receipts(self, wanted: set[str], timeout: float) -> set[str]:
        """Receipts among ``wanted`` that arrived within ``timeout`` (raises if the connection drops first)."""
        deadline = time.monotonic() + timeout
        with self._listener.cond:
            while True:
                got = wanted & self._listener.receipts
                if got == wanted:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not self._listener.connected:
                    self._listener.receipts -= got
                    raise BrokerUnavailable("connection lost while waiting for receipts")
                self._listener.cond.wait(min(remaining, 0.2))
            self._listener.receipts -= got
            return got

    def next_message(self, timeout: float) -> Frame | None:
        """The next MESSAGE frame, or None after ``timeout``; raises when the connection is lost."""
        try:
            return self._listener.messages.get(timeout=timeout)
        except queue.Empty:
            if self._conn is not None and not self.connected:
                raise BrokerUnavailable("connection to the broker lost") from None
            return None

    def ack(self, frame: Frame) -> None:
        """Acknowledge one message (client-individual)."""
        ack_id = frame.headers.get("ack") or frame.headers.get("message-id")
        try:
            self._conn.ack(ack_id, subscription=frame.headers.get("subscription"))
        except (NotConnectedException, StompException, OSError, AttributeError) as exc:
            raise BrokerUnavailable(f"ack failed: {exc.__class__.__name__}") from None

    def close(self) -> None:
        """Disconnect (quietly, whatever state the connection is in)."""
        if self._conn is not None:
            try:
                if self._conn.is_connected():
                    self._conn.disconnect()
            except (StompException, OSError):
                pass
            self._conn = None
