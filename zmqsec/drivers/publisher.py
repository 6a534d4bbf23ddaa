"""The publisher driver: a ZeroMQ XPUB socket, a clock and the reader registry around a StreamSender.

The socket sees subscriptions (XPUB_VERBOSE), so a reader that connects gets
the current key announcement at once; the registry and the trust directory are
watched (on a thread of their own: loading them never holds up publishing), so
``zmqsec keys readers remove`` or a new CRL rekeys the live stream within
``watch_interval`` seconds and a reload, without a restart.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

from zmqsec.errors import ZmqsecError
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import CrlPolicy
from zmqsec.machines.subscriptions import MAX_SUBSCRIPTIONS_PER_CONNECTION, SUBSCRIBE
from zmqsec.machines.rotation import TREE_MODE
from zmqsec.machines.sender import Archive, Rekeyed, RotationPolicy, Send, StreamSender, Suspended
from zmqsec.protocol.frames import ANNOUNCEMENT, CHECKPOINT, DATA, subscription_ok, topic_for
from zmqsec.protocol.primitives import MAX_XPUB_MESSAGE, STREAM_ID_BYTES

from . import gate
from .curve import CurveServer, apply_server
from .gate import SubscriptionGate
from .journal import Journal, JournalError
from .roots import RootArchive, RootServer, load_archive_key
from .recorder import Recorder
from .refusals import RefusalLog
from .replay import ReplayServer
from .transports import DEFAULT_MULTICAST_RATE, bind
from .watch import RegistryThread, RegistryWatch

log = logging.getLogger("zmqsec.publisher")

EXPIRY_INTERVAL = 60.0  # seconds between journal retention passes (a quarter of max_age when that is shorter)
IDLE_TICK = 0.05  # seconds an idle publisher waits at most before looking for a reader set the registry thread loaded


class JournalBlocked(ZmqsecError):
    """The journal cannot be written (disk full): nothing is published until it can."""


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
        journal: Journal | None = None,
        replay_endpoints: list[str] = (),
        max_subscriptions: int = MAX_SUBSCRIPTIONS_PER_CONNECTION,
    ) -> None:
        self._watch = RegistryWatch(registry, Path(trust_dir) if trust_dir else None, crl)
        self.journal = journal
        stream_id, previous = os.urandom(STREAM_ID_BYTES), None
        if journal is not None:
            name = stream.encode()
            previous = journal.last_run(name)  # the run before this one (docs/PROTOCOL.md §10.2)
            journal.open_run(name, stream_id, previous)
        policy = policy or RotationPolicy()
        tree = policy.mode == TREE_MODE
        roots_key = load_archive_key(journal, tree_mode=tree) if journal is not None else None  # §4.6
        self._archive = RootArchive(journal, stream.encode(), stream_id, roots_key) if journal and tree else None
        self.sender = StreamSender(stream, credential, self._watch.load(), policy,
                                   stream_id=stream_id, previous=previous)
        self._registry = RegistryThread(self._watch, watch_interval)
        self.last_rekey_seconds = 0.0  # CPU time of the last rekey, for status files
        self.watch_interval = watch_interval
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscription and unsubscription (the gate counts them)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.RCVHWM, gate.rcvhwm(bool(curve and curve.clients is not None)))  # subscriptions
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.RATE, multicast_rate)  # kbit/s, epgm/norm endpoints only
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_XPUB_MESSAGE)  # what a subscriber sends us is a subscription
        self._release_curve = apply_server(self.socket, curve) if curve else None
        for endpoint in endpoints:
            bind(self.socket, endpoint)
        self.endpoints = [self.socket.getsockopt_string(zmq.LAST_ENDPOINT)] if len(endpoints) == 1 else endpoints
        self.recorder = Recorder(lambda parts: self.socket.send_multipart(parts, copy=False), journal,
                                 background=True)
        self.replay = None
        if replay_endpoints:
            if journal is None:
                raise ZmqsecError("a replay endpoint needs a journal to serve (--journal DIR)")
            roots = RootServer(roots_key, credential, lambda: self.sender.readers, transport=policy.transport)
            self.replay = ReplayServer(journal.directory, list(replay_endpoints), context=self._context,
                                       curve=curve, roots=roots).start()
        self._next_watch = 0.0
        self._next_expiry = 0.0
        # Subscriptions that receive the key announcements (verbose XPUB: one per subscriber and topic).  A reader
        # subscribes to them after the data and the checkpoints, and a subscriber's subscriptions take effect in
        # the order it made them: one counted here receives the data, and the current key the publisher sends it.
        self.subscriptions = 0
        self._counted_topic = topic_for(stream, ANNOUNCEMENT)
        self._name = stream.encode()
        self._refusals = RefusalLog(log, f"stream {stream}")
        self.gate = SubscriptionGate(self.socket, lambda prefix: subscription_ok(prefix, self._name),
                                     self._refusals, limit=max_subscriptions)
        self._act(self.sender.start(time.monotonic()))
        self._registry.start()

    @property
    def stats(self):
        """The stream's counters (:class:`zmqsec.machines.sender.SenderStats`)."""
        return self.sender.stats

    def _act(self, actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                if action.again:
                    self.recorder.again(action.parts)
                elif action.kind == DATA:
                    self.recorder.data(action.parts, self.sender.stream_id, action.seq, action.epoch, action.digest)
                elif action.kind == CHECKPOINT:
                    self.recorder.checkpoint(action.parts)
                else:
                    self.recorder.control(action.parts)
            elif isinstance(action, Rekeyed):
                log.info("stream %s epoch %d: rekeyed for %d readers%s (%s), %d announcement bytes",
                         self.sender.stream, action.epoch, action.readers,
                         f" in {action.groups} groups" if action.groups else "", action.cause.value,
                         action.announcement_bytes)
            elif isinstance(action, Archive):
                if self._archive is not None:
                    self._archive.add(action.record)
            elif isinstance(action, Suspended):
                log.warning("stream %s: %s", self.sender.stream, action.reason)

    def publish(self, payload: bytes, spool_item: tuple[str, bytes] | None = None) -> int:
        """Encrypt and send one payload (and whatever rotation or checkpoint it makes due); returns its sequence
        number.  ``spool_item`` (name, SHA-256 of the payload) is recorded in the journal with it, so that a
        restarted publisher never publishes that item twice.  Raises :class:`JournalBlocked` while the journal
        cannot be written."""
        self.recorder.make_room()  # a journal behind by MAX_UNCOMMITTED bytes: wait for it
        if self.recorder.blocked:
            raise JournalBlocked(f"stream {self.sender.stream}: the journal cannot be written; publishing waits")
        now = time.monotonic()
        actions = self.sender.publish(payload, now)
        seq = next(a.seq for a in actions if isinstance(a, Send) and a.kind == DATA)
        if spool_item is not None and self.journal is not None:
            self.journal.spooled(spool_item[0], spool_item[1], self.sender.stream_id, seq)
        self._act(actions)
        if now >= self._next_watch or self._registry.ready:
            self.tick(now)
        return seq

    def published(self, name: str, digest: bytes) -> bool:
        """Is this spool item in the journal already (published by a run that was killed before removing it)?"""
        return self.journal is not None and self.journal.published(name, digest)

    def flush(self) -> bool:
        """Sign and send the checkpoint of everything published so far; False while the journal cannot be
        written (the checkpoint waits for it)."""
        self._act(self.sender.flush(time.monotonic()))
        return self.recorder.commit() if self.recorder.deadline is not None else not self.recorder.blocked

    def tick(self, now: float | None = None) -> None:
        """Service subscriptions, timers and registry changes (call when idle)."""
        now = time.monotonic() if now is None else now
        self._next_watch = now + self.watch_interval
        subscribed = [m[1:] for m in self.gate.take() if m[:1] == SUBSCRIBE]  # one per reader and topic
        self.subscriptions += sum(self._counted_topic.startswith(prefix) for prefix in subscribed)
        if subscribed:
            self._act(self.sender.subscription_seen(now, list(dict.fromkeys(subscribed))))
        readers = self._registry.take()
        if readers is not None:
            self._readers_changed(readers, now)
        self._act(self.sender.tick(now))
        self.recorder.tick()
        self._refusals.flush()
        if self.journal is not None and now >= self._next_expiry:
            self._next_expiry = now + min(EXPIRY_INTERVAL, self.journal.max_age / 4)
            try:
                self.journal.expire()
            except JournalError as exc:
                log.error("%s", exc)

    def _readers_changed(self, readers, now: float) -> None:
        started = time.thread_time()  # this thread's: the registry thread may be busy beside it
        actions = self.sender.readers_changed(readers, now)
        if any(isinstance(a, Rekeyed) for a in actions):
            self.last_rekey_seconds = time.thread_time() - started
        self._act(actions)

    def run_idle(self, seconds: float) -> None:
        """Service timers and subscriptions for ``seconds`` without publishing."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            wait = min(deadline, self.sender.next_deadline or deadline, self.recorder.deadline or deadline,
                       now + IDLE_TICK) - now
            self.socket.poll(max(0, int(wait * 1000)), zmq.POLLIN)
            self.tick()

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Service the socket until ``count`` subscribers are in (:attr:`subscriptions`) and the current key
        announcement their subscriptions asked for is out: each then receives the data and holds the key to it
        (a PUB drops what nobody subscribed to)."""
        deadline = time.monotonic() + timeout
        while (self.subscriptions < count or self.sender.announcement_owed) and time.monotonic() < deadline:
            self.run_idle(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.subscriptions >= count and not self.sender.announcement_owed

    def close(self) -> None:
        """Sign the last checkpoint and close the socket (and the replay server)."""
        self._registry.stop()
        self.flush()
        self.recorder.close()
        if self.replay is not None:
            self.replay.stop()
        self.gate.close()
        self.socket.close()
        if self._release_curve is not None:
            self._release_curve()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
