"""The publisher driver: a ZeroMQ XPUB socket, a clock and the reader registry around a StreamSender.

The socket sees subscriptions (XPUB_VERBOSE), so a reader that connects gets
the current key announcement at once; the registry and the trust directory are
watched, so ``zmqsec keys readers remove`` or a new CRL rekeys the live stream
within ``watch_interval`` seconds, without a restart.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from keys.errors import ZmqsecError
from keys.pemfiles import Credential
from keys.registry import LoadCache, ReaderRegistry, ReaderSet
from keys.trust import CrlPolicy, TrustStore

from .curve import CurveServer, apply_server
from .frames import DATA, topic_for
from .primitives import MAX_XPUB_MESSAGE
from .sender import RotationPolicy, StreamSender
from .transports import DEFAULT_MULTICAST_RATE, check_endpoint
from .watch import directory_stamp, signature

log = logging.getLogger("zmqsec.publisher")


@dataclass
class RegistryWatch:
    """Reload the authorized reader set when the registry, the DN list or the trust directory change."""

    registry: ReaderRegistry
    trust_dir: Path | None
    crl: CrlPolicy = CrlPolicy.REQUIRE
    recheck_interval: float = 60.0  # certificates and CRLs expire without any file changing
    _seen: tuple = field(default=(), init=False)
    _loaded_at: float = field(default=0.0, init=False)
    _trust: tuple = field(default=((), None), init=False)  # (directory signature, TrustStore)
    _cache: LoadCache = field(default_factory=LoadCache, init=False)

    def _signature(self) -> tuple:
        # The registry directory by its own stamp (a stat per reader file every 0.25 s would cost
        # more than the stream at 10,000 readers); a file overwritten in place is seen at the recheck.
        return (directory_stamp(self.registry.directory), signature(self.registry.allowed_dns_path),
                signature(self.trust_dir))

    def load(self) -> ReaderSet:
        """The authorized readers now.  With thousands of readers, only what changed is parsed and
        validated again (a revocation by registry removal costs a directory scan, not 10,000 validations)."""
        recheck = time.monotonic() - self._loaded_at >= self.recheck_interval
        self._seen, self._loaded_at = self._signature(), time.monotonic()
        if not self.trust_dir:
            readers = self.registry.load(cache=self._cache)
        else:
            readers = self.registry.load(self._trust_store(self._seen[2], recheck), crl=self.crl, cache=self._cache)
        for refusal in readers.refused:
            log.warning("reader registry: %s refused [%s]: %s", refusal.path.name, refusal.reason, refusal.message)
        return readers

    def _trust_store(self, trust_signature: tuple, recheck: bool) -> TrustStore:
        """The trust store, re-read when its directory changed and at every recheck (a CRL rewritten with
        the same size and times); kept as the same object -- and so are the cached verdicts -- while its
        certificates and CRLs are the same."""
        held = self._trust[1]
        if held is None or recheck or self._trust[0] != trust_signature:
            fresh = TrustStore.from_directory(self.trust_dir)
            if held is None or fresh.fingerprint != held.fingerprint:
                held = fresh
            self._trust = (trust_signature, held)
        return held

    def changed(self) -> bool:
        return self._signature() != self._seen or time.monotonic() - self._loaded_at >= self.recheck_interval


class Publisher:
    """Publish one encrypted stream.

    ``publish()`` does the per-message work in the caller's thread; call
    ``tick()`` when idle (or use :meth:`run_idle`) so checkpoints, periodic
    re-announcements and registry changes are handled on time.
    """

    def __init__(
        self,
        stream: str,
        endpoints: list[str],
        credential: Credential,
        registry: ReaderRegistry,
        *,
        trust_dir: str | os.PathLike | None = None,
        crl: CrlPolicy = CrlPolicy.REQUIRE,
        policy: RotationPolicy | None = None,
        watch_interval: float = 0.25,
        context: zmq.Context | None = None,
        sndhwm: int = 100_000,
        curve: CurveServer | None = None,
        multicast_rate: int = DEFAULT_MULTICAST_RATE,
    ) -> None:
        self._watch = RegistryWatch(registry, Path(trust_dir) if trust_dir else None, crl)
        self.sender = StreamSender(stream, credential, self._watch.load(), policy or RotationPolicy())
        self.watch_interval = watch_interval
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.RATE, multicast_rate)  # kbit/s, epgm/norm endpoints only
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_XPUB_MESSAGE)  # what a subscriber sends us is a subscription
        self._release_curve = apply_server(self.socket, curve) if curve else None
        for endpoint in endpoints:
            check_endpoint(endpoint)
            self.socket.bind(endpoint)
        self.endpoints = [self.socket.getsockopt_string(zmq.LAST_ENDPOINT)] if len(endpoints) == 1 else endpoints
        self._next_watch = 0.0
        self.subscriptions = 0  # subscriptions that receive data (XPUB_VERBOSE: one per subscriber and topic)
        self._data_topic = topic_for(stream, DATA)
        self._send(self.sender.start(time.monotonic()))

    @property
    def stats(self):
        return self.sender.stats

    def _send(self, messages: list[list[bytes]]) -> None:
        for message in messages:
            self.socket.send_multipart(message, copy=False)

    def publish(self, payload: bytes) -> None:
        now = time.monotonic()
        self._send(self.sender.publish(payload, now))
        if now >= self._next_watch:
            self.tick(now)

    def flush(self) -> None:
        self._send(self.sender.flush(time.monotonic()))

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        subscribed = []
        while self.socket.poll(0, zmq.POLLIN):
            message = self.socket.recv()
            if message[:1] == b"\x01":
                subscribed.append(message[1:])
                self.subscriptions += self._data_topic.startswith(message[1:])
        if subscribed:
            self._send(self.sender.subscription_seen(now, subscribed))
        if now >= self._next_watch:
            self._next_watch = now + self.watch_interval
            if self._watch.changed():
                self.reload_readers(now)
        self._send(self.sender.tick(now))

    def reload_readers(self, now: float | None = None) -> None:
        """Re-read the registry now; rekey if the authorized set changed."""
        now = time.monotonic() if now is None else now
        try:
            readers = self._watch.load()
        except ZmqsecError as exc:  # e.g. the trust directory is being replaced: keep the current set, retry
            log.error("stream %s: cannot reload readers (%s); keeping the current set", self.sender.stream, exc)
            return
        self._send(self.sender.readers_changed(readers, now))

    def run_idle(self, seconds: float) -> None:
        """Service timers and subscriptions for ``seconds`` without publishing."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            wait = min(deadline, self.sender.next_deadline or deadline, now + self.watch_interval) - now
            self.socket.poll(max(0, int(wait * 1000)), zmq.POLLIN)
            self.tick()

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Service the socket until ``count`` subscriptions to the data were seen (a PUB drops what nobody
        subscribed to)."""
        deadline = time.monotonic() + timeout
        while self.subscriptions < count and time.monotonic() < deadline:
            self.run_idle(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.subscriptions >= count

    def close(self) -> None:
        self.flush()
        self.socket.close()
        if self._release_curve is not None:
            self._release_curve()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
