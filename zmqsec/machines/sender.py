"""The publisher's state machine (docs/PROTOCOL.md §6.1): epochs, rotation, rekeying, checkpoints.

No sockets, no timers, no logging.  Inputs are method calls (``start``,
``publish``, ``tick``, ``readers_changed``, ``subscription_seen``, ``flush``)
carrying the current time; outputs are typed actions: :class:`Send` a frame,
and :class:`Rekeyed` / :class:`Suspended` for the driver to log and count.  A
driver (``zmqsec.drivers.publisher``) owns the socket and the clock.

Ordering is the guarantee that makes rotation lossless: an epoch's
announcement is always emitted before its first data frame (and after the
group key announcements it needs), and ZeroMQ keeps a publisher's messages in
order on every path.  How an epoch key reaches the readers is the key
distribution's business (:mod:`.distribution`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from zmqsec.errors import ZmqsecError
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import ReaderSet
from zmqsec.protocol.announce import make_announcement
from zmqsec.protocol.datacipher import DataKey
from zmqsec.protocol.checkpoint import sign_run
from zmqsec.protocol.frames import (
    ANNOUNCEMENT,
    CHECKPOINT,
    DATA,
    GROUP,
    RUN,
    TREE,
    encode,
    encode_data,
    stream_name,
    topic_for,
)
from zmqsec.protocol.primitives import KEY_BYTES, MAX_EPOCH, MAX_PAYLOAD, STREAM_ID_BYTES, frame_digest
from zmqsec.protocol.rootarchive import RootRecord

from .checkpoints import Checkpointer
from .distribution import KeyDistribution, ReaderGroups, SingleEnvelope
from .keytree import TreeDistribution
from .reannounce import Reannouncer
from .rotation import TREE_MODE, Epoch, RekeyCause, RotationPolicy

__all__ = ["StreamSender", "RotationPolicy", "RekeyCause", "Send", "Rekeyed", "Suspended", "SenderStats", "NoReaders",
           "PayloadTooLarge"]


class NoReaders(ZmqsecError):
    """The publisher has no authorized reader to wrap a key for."""


class PayloadTooLarge(ZmqsecError):
    """A payload does not fit in one data frame (``MAX_PAYLOAD`` bytes)."""


class Send(NamedTuple):
    """Send one frame: its kind (``frames.DATA``, ``ANNOUNCEMENT``, ``GROUP``, ``TREE``, ``CHECKPOINT``, ``RUN``) and its
    two ZeroMQ message parts; ``seq`` and ``epoch`` are a data frame's (0 for the other kinds).  A named tuple:
    one is made per message."""

    kind: bytes
    parts: list[bytes]
    seq: int = 0
    epoch: int = 0
    again: bool = False  # a copy of a frame sent before (journaled already)
    digest: bytes = b""  # a data frame's digest (docs/PROTOCOL.md §5), for the journal


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """A new epoch began (for the driver's log and status)."""

    epoch: int
    readers: int
    groups: int
    cause: RekeyCause
    announcement_bytes: int  # every announcement byte this rekey emitted


@dataclass(frozen=True, slots=True)
class Archive:
    """Key tree mode: journal this update's sealed root record before the frames that follow (docs/PROTOCOL.md
    §10.3), so that a reader can be given the run's roots later."""

    record: RootRecord


@dataclass(frozen=True, slots=True)
class Suspended:
    """Publishing stopped: no key may be used until the reader set changes."""

    reason: str


Action = Send | Rekeyed | Suspended | Archive


@dataclass
class SenderStats:
    """Counters of one stream, for status files and the bench."""

    epoch: int = 0
    readers: int = 0
    sent: int = 0
    bytes: int = 0
    rekeys: int = 0
    announcements: int = 0
    checkpoints: int = 0
    last_rekey_cause: str = ""
    announcement_bytes: int = 0  # the current epoch announcement
    groups: int = 0  # reader groups (0 in single-envelope mode)
    group_rekeys: int = 0  # group keys made
    tree_messages: int = 0  # key tree updates and path envelopes sent (tree mode, docs/PROTOCOL.md §4.6)
    last_rekey_bytes: int = 0  # every announcement byte the last rekey emitted


def distribution_for(policy, stream: bytes, stream_id: bytes, credential, rng, wall_clock) -> KeyDistribution:
    """The key distribution a rotation policy asks for."""
    if policy.mode == TREE_MODE:
        return TreeDistribution(stream, stream_id, credential, policy.transport, rng, wall_clock)
    if policy.group_size:
        return ReaderGroups(stream, stream_id, credential, policy.group_size, policy.transport, rng, wall_clock)
    return SingleEnvelope(policy.transport)


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
    previous: tuple[bytes, int] | None = None  # the run before this one and its last seq (docs/PROTOCOL.md §10.2)

    def __post_init__(self) -> None:
        self._data_topic = topic_for(self.stream, DATA)
        self.stream_bytes = stream_name(self._data_topic)
        self.stream_id = self.stream_id or self.rng(STREAM_ID_BYTES)
        self._seq = 0
        self._epoch: Epoch | None = None
        self._last_epoch = 0  # epochs only grow within a stream id, even across a suspension
        self._distribution = distribution_for(self.policy, self.stream_bytes, self.stream_id, self.credential,
                                              self.rng, self.wall_clock)
        self._checkpoints = Checkpointer(self.stream_bytes, self.stream_id, self.credential.key,
                                         self.policy.checkpoint_interval, self.policy.checkpoint_max,
                                         self.policy.checkpoint_min_interval)
        self._reannounce = Reannouncer(topic_for(self.stream, ANNOUNCEMENT), self.policy.reannounce_interval,
                                       self.policy.group_reannounce_interval)
        previous_id, previous_last = self.previous or (b"", 0)
        self._run = encode(sign_run(self.stream_bytes, self.stream_id, previous_id, previous_last, self.credential.key))
        self._last_checkpoint: list[bytes] | None = None
        self.stats = SenderStats()

    @property
    def epoch(self) -> int:
        """The current epoch number (0 while suspended or before the start)."""
        return self._epoch.number if self._epoch else 0

    # -- epochs ------------------------------------------------------------------------

    def _rekey(self, now: float, cause: RekeyCause) -> list[Action]:
        if not len(self.readers):
            raise NoReaders(f"stream {self.stream}: no authorized reader to wrap a key for (check the reader registry)")
        number = self._last_epoch + 1
        if number > MAX_EPOCH:
            raise ZmqsecError(f"stream {self.stream}: epoch counter exhausted; restart the publisher")
        wrapping = self._distribution.rekey(self.readers, now)
        key = self.rng(KEY_BYTES)
        announcement = encode(make_announcement(self.stream_bytes, self.stream_id, number, key, wrapping.recipients,
                                                self.credential, clock=self.wall_clock))
        self._epoch = Epoch(number, DataKey(key), announcement, now)
        self._last_epoch = number
        groups = self._distribution.groups
        self._reannounce.groups_changed(groups, now)
        self._reannounce.epoch_sent(now)
        out: list[Action] = ([Send(wrapping.kind, m) for m in wrapping.announcements]
                             + [Send(ANNOUNCEMENT, announcement)])
        archived: list[Action] = [Archive(wrapping.archive)] if wrapping.archive is not None else []
        emitted = sum(len(p) for a in out for p in a.parts)
        s = self.stats
        s.epoch, s.readers, s.rekeys, s.announcements = number, len(self.readers), s.rekeys + 1, s.announcements + 1
        s.last_rekey_cause, s.announcement_bytes, s.last_rekey_bytes = cause.value, len(announcement[1]), emitted
        s.groups = len(groups)
        if wrapping.kind == TREE:
            s.tree_messages += len(wrapping.announcements)
        else:
            s.group_rekeys += len(wrapping.announcements)
        return archived + out + [Rekeyed(number, len(self.readers), len(groups), cause, emitted)]

    def _suspend(self, reason: str) -> list[Action]:
        """Forget the key: nobody may read what would be published now."""
        self._epoch, self.stats.readers = None, 0
        return [Suspended(reason)]

    def start(self, now: float) -> list[Action]:
        """The first epoch's announcement and the run frame; call once before publishing."""
        return self._rekey(now, RekeyCause.START) + [Send(RUN, self._run)]

    def readers_changed(self, readers: ReaderSet, now: float) -> list[Action]:
        """A new reader set: rekey at once if it differs (revocation excludes the removed reader from here on)."""
        if readers.same_readers(self.readers):
            return []
        out = self.flush(now)
        self.readers = readers
        if not len(readers):
            # Nobody may read: publish() refuses (NoReaders) until a reader is added.
            return out + self._suspend("no authorized reader left; publishing suspended")
        try:
            return out + self._rekey(now, RekeyCause.READERS)
        except ZmqsecError as exc:
            # No new key: stop using the old one too, or a removed reader would go on reading.
            self.readers = ReaderSet()
            return out + self._suspend(f"rekey failed ({exc}); publishing suspended until the reader set changes")

    def subscription_seen(self, now: float, topics: list[bytes] | None = None) -> list[Action]:
        """New subscriptions (XPUB) to ``topics`` (None: to everything): re-announce the current epoch
        and the group keys they match (or a reader's key tree path), so a new reader can decrypt at once."""
        topics = [b""] if topics is None else topics
        self._reannounce.subscribed(topics)
        self._distribution.subscribed(topics)
        return self._pending(now)

    def _pending(self, now: float) -> list[Action]:
        if self._epoch is None:
            return []
        paths = self._distribution.due(now)
        self.stats.tree_messages += len(paths)
        messages = self._reannounce.due(self._distribution.groups, self._epoch.announcement, now)
        self.stats.announcements += len(messages)
        out: list[Action] = [Send(TREE, m) for m in paths]
        out += [Send(ANNOUNCEMENT if m is self._epoch.announcement else GROUP, m) for m in messages]
        if messages and messages[-1] is self._epoch.announcement:
            out.append(Send(RUN, self._run))  # late joiners and archives learn where this run comes from
            if self._last_checkpoint is not None:
                # ... and where it is: a reader that lost the tail of a burst (or its last checkpoint) learns
                # of the hole on an idle stream too, not only from the next record.
                out.append(Send(CHECKPOINT, self._last_checkpoint, again=True))
        return out

    # -- data ----------------------------------------------------------------------------

    def publish(self, payload: bytes, now: float) -> list[Action]:
        """Encrypt one payload: the data frame, preceded by a rotation's announcements and followed
        by a checkpoint when either is due."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadTooLarge(f"stream {self.stream}: a payload of {len(payload)} bytes does not fit in a frame "
                                  f"(at most {MAX_PAYLOAD})")
        out: list[Action] = []
        epoch = self._epoch
        if epoch is None:
            out += self.start(now)
            epoch = self._epoch
        else:
            cause = epoch.rotation_due(self.policy, now, len(payload))
            if cause is not None:
                out += self.flush(now) + self._rekey(now, cause)
                epoch = self._epoch
        self._seq = seq = self._seq + 1
        topic = self._data_topic
        parts = encode_data(topic, self.stream_id, epoch.number, seq, epoch.key.seal(topic, self.stream_id, epoch.number,
                                                                                    seq, payload))
        digest = frame_digest(topic, parts[1])
        out.append(Send(DATA, parts, seq, epoch.number, digest=digest))
        size = len(payload)
        epoch.messages += 1  # the epoch's rotation counters (inline: every message passes here)
        epoch.bytes += size
        stats = self.stats
        stats.sent += 1
        stats.bytes += size
        if self._checkpoints.add(seq, digest, now):
            out += self.flush(now)
        return out

    def flush(self, now: float) -> list[Action]:
        """Sign the digests of the frames sent since the last checkpoint."""
        checkpoint = self._checkpoints.sign(now)
        if checkpoint is None:
            return []
        self.stats.checkpoints += 1
        self._last_checkpoint = encode(checkpoint)
        return [Send(CHECKPOINT, self._last_checkpoint)]

    def tick(self, now: float) -> list[Action]:
        """Time passes: flush a due checkpoint, rotate an old key, re-announce periodically."""
        out = self.flush(now) if self._checkpoints.due(now) else []
        if self._epoch is not None and now - self._epoch.started >= self.policy.max_age:
            out += self.flush(now) + self._rekey(now, RekeyCause.AGE)
        if self._epoch is None:
            return out
        self._reannounce.periodic(self._distribution.groups, now)
        return out + self._pending(now)

    @property
    def announcement_owed(self) -> bool:
        """Is the current epoch's announcement owed to a subscription and not sent yet (its gap has not passed)?"""
        return self._epoch is not None and self._reannounce.epoch_pending

    @property
    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (for a driver's poll timeout)."""
        if self._epoch is None:
            return None
        deadlines = self._reannounce.deadlines(self._distribution.groups)
        deadlines.append(self._epoch.started + self.policy.max_age)
        if (paths := self._distribution.deadline) is not None:
            deadlines.append(paths)
        if (checkpoint := self._checkpoints.deadline) is not None:
            deadlines.append(checkpoint)
        return min(deadlines)


def wire(actions: list[Action]) -> list[list[bytes]]:
    """The ZeroMQ messages among ``actions``, in order (what a socket would carry)."""
    return [a.parts for a in actions if isinstance(a, Send)]
