"""The publisher's state machine: epochs, rotation, rekeying, checkpoints.  No sockets, no timers.

Inputs are method calls (``publish``, ``tick``, ``readers_changed``,
``subscription_seen``, ``flush``) carrying the current time; outputs are the
ZeroMQ messages to send, in order.  A driver (``zmqsec.publisher``) owns the
socket and the clock.  Ordering is the guarantee that makes rotation lossless:
an epoch's announcement is always emitted before its first data frame (and
after the group key announcements it needs), and ZeroMQ keeps a publisher's
messages in order on every path.

Two ways to wrap an epoch key (docs/PROTOCOL.md §4): for every reader
certificate in one envelope (``group_size = 0``, the default), or for reader
groups (``group_size = N``): each group of about N readers shares a group key
that travels in its own envelope on its own topic and changes only when the
group's membership does; the epoch key is then wrapped once per group key.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import ZmqsecError
from keys.pemfiles import Credential
from keys.registry import ReaderSet

from . import cms
from .announce import GroupKey, make_announcement, make_group_announcement
from .checkpoint import sign_checkpoint
from .frames import ANNOUNCEMENT, DATA, Announcement, encode, stream_name, topic_for
from .groups import group_bits, partition
from .primitives import (
    KEY_BYTES,
    MAX_EPOCH,
    MAX_GENERATION,
    STREAM_ID_BYTES,
    VERSION,
    associated_data,
    frame_digest,
    nonce,
)

log = logging.getLogger("zmqsec.publisher")

# Subscriptions trigger at most one re-announcement per this many seconds (bursts are coalesced, not dropped).
SUBSCRIPTION_REANNOUNCE_GAP = 0.05


class NoReaders(ZmqsecError):
    """The publisher has no authorized reader to wrap a key for."""


class RekeyCause(enum.Enum):
    START = "start"
    AGE = "rotation-age"
    MESSAGES = "rotation-messages"
    BYTES = "rotation-bytes"
    READERS = "readers-changed"


@dataclass(frozen=True)
class RotationPolicy:
    """When keys rotate and how often the publisher speaks up.  Times in seconds."""

    max_age: float = 3600.0
    max_messages: int = 1_000_000
    max_bytes: int = 1 << 30
    reannounce_interval: float = 1.0
    checkpoint_interval: float = 0.02
    checkpoint_max: int = 256
    transport: str = cms.KeyTransport.OAEP
    group_size: int = 0  # 0: one envelope for every reader; N: reader groups of about N (docs/PROTOCOL.md §4.5)
    group_reannounce_interval: float = 4.0  # under a reader's key_timeout (5 s): a multicast joiner loses nothing

    def __post_init__(self) -> None:
        if self.group_size < 0:
            raise ValueError("group_size must be 0 (single envelope) or positive")
        for name in ("max_age", "reannounce_interval", "checkpoint_interval", "group_reannounce_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 1 <= self.checkpoint_max <= 4096:
            raise ValueError("checkpoint_max must be in 1..4096")
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")


@dataclass
class SenderStats:
    epoch: int = 0
    readers: int = 0
    sent: int = 0
    bytes: int = 0
    rekeys: int = 0
    announcements: int = 0
    checkpoints: int = 0
    last_rekey_cause: str = ""
    last_rekey_seconds: float = 0.0
    announcement_bytes: int = 0  # the current epoch announcement
    groups: int = 0  # reader groups (0 in single-envelope mode)
    group_rekeys: int = 0  # group keys made
    last_rekey_bytes: int = 0  # every announcement byte the last rekey emitted


@dataclass
class _Group:
    key: GroupKey
    members: frozenset[str]  # reader certificate fingerprints
    message: list[bytes]
    last_sent: float


@dataclass
class _Epoch:
    number: int
    aead: AESGCM
    announcement: list[bytes]
    started: float
    messages: int = 0
    bytes: int = 0


@dataclass
class StreamSender:
    """One stream of one publisher."""

    stream: str
    credential: Credential
    readers: ReaderSet
    policy: RotationPolicy = field(default_factory=RotationPolicy)
    rng: Callable[[int], bytes] = os.urandom
    stream_id: bytes | None = None
    wall_clock: Callable | None = None  # signingTime of announcements (None: now)

    def __post_init__(self) -> None:
        self.stream_bytes = stream_name(topic_for(self.stream, DATA))
        self.stream_id = self.stream_id or self.rng(STREAM_ID_BYTES)
        self._data_topic = topic_for(self.stream, DATA)
        self._seq = 0
        self._epoch: _Epoch | None = None
        self._last_epoch = 0  # epochs only grow within a stream id, even across a suspension
        self._digests: list[bytes] = []
        self._first_unsigned_seq = 1
        self._first_unsigned_at = 0.0
        self._last_announce = 0.0
        self._announce_topic = topic_for(self.stream, ANNOUNCEMENT)
        self._pending_epoch = False  # a re-announcement asked for by a subscription, sent when the gap allows
        self._groups: dict[bytes, _Group] = {}
        self._group_topics: dict[bytes, bytes] = {}  # group topic -> tag
        self._pending_groups: set[bytes] = set()
        self._groups_announced = 0.0
        self._generation = 0
        self.stats = SenderStats()

    # -- epochs ----------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch.number if self._epoch else 0

    def _rekey(self, now: float, cause: RekeyCause) -> list[list[bytes]]:
        if not len(self.readers):
            raise NoReaders(f"stream {self.stream}: no authorized reader to wrap a key for (check the reader registry)")
        number = self._last_epoch + 1
        if number > MAX_EPOCH:
            raise ZmqsecError(f"stream {self.stream}: epoch counter exhausted; restart the publisher")
        started = time.perf_counter()  # a statistic only; logic uses ``now``
        if self.policy.group_size:
            out = self._regroup(now)
            recipients, groups = [], [g.key for g in self._groups.values()]
        else:
            out, recipients, groups = [], [r.certificate for r in self.readers], []
        key = self.rng(KEY_BYTES)
        announcement: Announcement = make_announcement(
            self.stream_bytes, self.stream_id, number, key, recipients, self.credential, groups=groups,
            transport=self.policy.transport, clock=self.wall_clock)
        message = encode(announcement)
        self._epoch = _Epoch(number, AESGCM(key), message, now)
        self._last_epoch = number
        self._last_announce = now
        self._pending_epoch = False
        out.append(message)
        s = self.stats
        s.epoch, s.readers, s.rekeys, s.announcements = number, len(self.readers), s.rekeys + 1, s.announcements + 1
        s.last_rekey_cause, s.announcement_bytes = cause.value, len(message[1])
        s.last_rekey_bytes = sum(len(part) for m in out for part in m)
        s.last_rekey_seconds = time.perf_counter() - started
        log.info("stream %s epoch %d: rekeyed for %d readers%s (%s), %d announcement bytes",
                 self.stream, number, len(self.readers), f" in {len(self._groups)} groups" if groups else "",
                 cause.value, s.last_rekey_bytes)
        return out

    def _regroup(self, now: float) -> list[list[bytes]]:
        """Group the readers; a group whose membership changed gets a new key, announced to its members only."""
        bits = group_bits(len(self.readers), self.policy.group_size)
        out, groups = [], {}
        for tag, members in sorted(partition(self.readers, bits).items()):
            membership = frozenset(r.fingerprint for r in members)
            old = self._groups.get(tag)
            if old is not None and old.members == membership:
                groups[tag] = old
                continue
            if self._generation >= MAX_GENERATION:
                raise ZmqsecError(f"stream {self.stream}: group key counter exhausted; restart the publisher")
            self._generation += 1
            key = GroupKey(tag, self._generation, self.rng(KEY_BYTES))
            message = encode(make_group_announcement(self.stream_bytes, self.stream_id, key,
                                                     [r.certificate for r in members], self.credential,
                                                     transport=self.policy.transport, clock=self.wall_clock))
            groups[tag] = _Group(key, membership, message, now)
            out.append(message)
        self._groups = groups
        self._groups_announced = self._groups_announced or now
        self._group_topics = {g.message[0]: tag for tag, g in groups.items()}
        self._pending_groups &= set(groups)
        self.stats.groups = len(groups)
        self.stats.group_rekeys += len(out)
        return out

    def start(self, now: float) -> list[list[bytes]]:
        """The first epoch's announcement; call once before publishing."""
        return self._rekey(now, RekeyCause.START)

    def readers_changed(self, readers: ReaderSet, now: float) -> list[list[bytes]]:
        """A new reader set: rekey at once if it differs (revocation excludes the removed reader from here on)."""
        if readers.same_readers(self.readers):
            return []
        out = self.flush(now)
        self.readers = readers
        if not len(readers):
            # Nobody may read: forget the key; publish() refuses (NoReaders) until a reader is added.
            self._epoch = None
            self.stats.readers = 0
            log.warning("stream %s: no authorized reader left; publishing suspended", self.stream)
            return out
        try:
            return out + self._rekey(now, RekeyCause.READERS)
        except ZmqsecError as exc:
            # No new key: stop using the old one too, or a removed reader would go on reading.
            self.readers, self._epoch, self.stats.readers = ReaderSet(), None, 0
            log.error("stream %s: rekey failed (%s); publishing suspended until the reader set changes", self.stream, exc)
            return out

    def subscription_seen(self, now: float, topics: list[bytes] | None = None) -> list[list[bytes]]:
        """New subscriptions (XPUB) to ``topics`` (None: to everything): re-announce the current epoch
        and the group keys they match, so a new reader can decrypt at once.  Each announcement goes
        out at most every 50 ms, so a burst of subscriptions is coalesced, never an amplifier."""
        for topic in [b""] if topics is None else topics:
            if self._announce_topic.startswith(topic):
                self._pending_epoch = True
            if topic in self._group_topics:  # a reader's own group: one lookup
                self._pending_groups.add(self._group_topics[topic])
            else:  # any other prefix (a relay, a recorder, a reader's unused tag lengths) may match many, or none
                self._pending_groups.update(tag for t, tag in self._group_topics.items() if t.startswith(topic))
        return self._send_pending(now)

    def _send_pending(self, now: float) -> list[list[bytes]]:
        """Pending re-announcements whose gap has passed: group keys first, then the epoch that needs them."""
        if self._epoch is None:
            return []
        out = []
        for tag in sorted(self._pending_groups):
            group = self._groups[tag]
            if now - group.last_sent >= SUBSCRIPTION_REANNOUNCE_GAP:
                group.last_sent = now
                self._pending_groups.discard(tag)
                out.append(group.message)
        if self._pending_epoch and now - self._last_announce >= SUBSCRIPTION_REANNOUNCE_GAP:
            self._last_announce = now
            self._pending_epoch = False
            out.append(self._epoch.announcement)
        self.stats.announcements += len(out)
        return out

    # -- data -------------------------------------------------------------------

    def publish(self, payload: bytes, now: float) -> list[list[bytes]]:
        """Encrypt one payload; returns the data frame, preceded by a rotation's
        announcement and followed by a checkpoint when either is due."""
        out = []
        epoch = self._epoch
        if epoch is None:
            out += self.start(now)
            epoch = self._epoch
        else:
            cause = self._rotation_due(epoch, now, len(payload))
            if cause is not None:
                out += self.flush(now) + self._rekey(now, cause)
                epoch = self._epoch
        self._seq = seq = self._seq + 1
        topic = self._data_topic
        ciphertext = epoch.aead.encrypt(nonce(epoch.number, seq), payload, associated_data(topic, self.stream_id, epoch.number, seq))
        body = msgpack.packb([VERSION, self.stream_id, epoch.number, seq, ciphertext], use_bin_type=True)
        out.append([topic, body])
        if not self._digests:
            self._first_unsigned_seq, self._first_unsigned_at = seq, now
        self._digests.append(frame_digest(topic, body))
        epoch.messages += 1
        epoch.bytes += len(payload)
        self.stats.sent += 1
        self.stats.bytes += len(payload)
        if len(self._digests) >= self.policy.checkpoint_max:
            out += self.flush(now)
        return out

    def _rotation_due(self, epoch: _Epoch, now: float, incoming: int) -> RekeyCause | None:
        p = self.policy
        if now - epoch.started >= p.max_age:
            return RekeyCause.AGE
        if epoch.messages >= p.max_messages:
            return RekeyCause.MESSAGES
        if epoch.bytes + incoming > p.max_bytes and epoch.messages:
            return RekeyCause.BYTES
        return None

    def flush(self, now: float) -> list[list[bytes]]:
        """Sign the digests of the frames sent since the last checkpoint."""
        if not self._digests:
            return []
        checkpoint = sign_checkpoint(self.stream_bytes, self.stream_id, self._first_unsigned_seq,
                                     b"".join(self._digests), self.credential.key)
        self._digests.clear()
        self.stats.checkpoints += 1
        return [encode(checkpoint)]

    def tick(self, now: float) -> list[list[bytes]]:
        """Time passes: flush a due checkpoint, rotate an old key, re-announce periodically."""
        out = []
        if self._digests and now - self._first_unsigned_at >= self.policy.checkpoint_interval:
            out += self.flush(now)
        if self._epoch is not None and now - self._epoch.started >= self.policy.max_age:
            out += self.flush(now) + self._rekey(now, RekeyCause.AGE)
        if self._epoch is None:
            return out
        if now - self._last_announce >= self.policy.reannounce_interval:
            self._pending_epoch = True
        if self._groups and now - self._groups_announced >= self.policy.group_reannounce_interval:
            self._groups_announced = now
            self._pending_groups.update(self._groups)
        return out + self._send_pending(now)

    @property
    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (for a driver's poll timeout)."""
        if self._epoch is None:
            return None
        deadlines = [self._last_announce + self.policy.reannounce_interval, self._epoch.started + self.policy.max_age]
        if self._pending_epoch:
            deadlines.append(self._last_announce + SUBSCRIPTION_REANNOUNCE_GAP)
        if self._pending_groups:
            deadlines.append(min(self._groups[t].last_sent for t in self._pending_groups) + SUBSCRIPTION_REANNOUNCE_GAP)
        if self._groups:
            deadlines.append(self._groups_announced + self.policy.group_reannounce_interval)
        if self._digests:
            deadlines.append(self._first_unsigned_at + self.policy.checkpoint_interval)
        return min(deadlines)
