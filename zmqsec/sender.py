"""The publisher's state machine: epochs, rotation, rekeying, checkpoints.  No sockets, no timers.

Inputs are method calls (``publish``, ``tick``, ``readers_changed``,
``subscription_seen``, ``flush``) carrying the current time; outputs are the
ZeroMQ messages to send, in order.  A driver (``zmqsec.publisher``) owns the
socket and the clock.  Ordering is the guarantee that makes rotation lossless:
an epoch's announcement is always emitted before its first data frame, and
ZeroMQ keeps a publisher's messages in order on every path.
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
from .announce import make_announcement
from .checkpoint import sign_checkpoint
from .frames import DATA, Announcement, encode, stream_name, topic_for
from .primitives import KEY_BYTES, MAX_EPOCH, STREAM_ID_BYTES, VERSION, associated_data, frame_digest, nonce

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

    def __post_init__(self) -> None:
        for name in ("max_age", "reannounce_interval", "checkpoint_interval"):
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
    announcement_bytes: int = 0


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
        self._reannounce_pending = False
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
        key = self.rng(KEY_BYTES)
        announcement: Announcement = make_announcement(
            self.stream_bytes, self.stream_id, number, key, [r.certificate for r in self.readers], self.credential,
            transport=self.policy.transport, clock=self.wall_clock)
        message = encode(announcement)
        self._epoch = _Epoch(number, AESGCM(key), message, now)
        self._last_epoch = number
        self._last_announce = now
        s = self.stats
        s.epoch, s.readers, s.rekeys, s.announcements = number, len(self.readers), s.rekeys + 1, s.announcements + 1
        s.last_rekey_cause, s.announcement_bytes = cause.value, len(message[1])
        s.last_rekey_seconds = time.perf_counter() - started
        log.info("stream %s epoch %d: rekeyed for %d readers (%s), announcement %d bytes",
                 self.stream, number, len(self.readers), cause.value, len(message[1]))
        return [message]

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

    def subscription_seen(self, now: float) -> list[list[bytes]]:
        """A new subscriber (XPUB): re-announce the current epoch so it can decrypt at once
        (at most every 50 ms, so a burst of subscriptions is not an amplifier)."""
        if now - self._last_announce < SUBSCRIPTION_REANNOUNCE_GAP:
            self._reannounce_pending = True  # sent by tick() when the gap has passed
            return []
        return self._reannounce(now)

    def _reannounce(self, now: float) -> list[list[bytes]]:
        if self._epoch is None:
            return []
        self._last_announce = now
        self._reannounce_pending = False
        self.stats.announcements += 1
        return [self._epoch.announcement]

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
        gap = SUBSCRIPTION_REANNOUNCE_GAP if self._reannounce_pending else self.policy.reannounce_interval
        if self._epoch is not None and now - self._last_announce >= gap:
            out += self._reannounce(now)
        return out

    @property
    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (for a driver's poll timeout)."""
        if self._epoch is None:
            return None
        gap = SUBSCRIPTION_REANNOUNCE_GAP if self._reannounce_pending else self.policy.reannounce_interval
        deadlines = [self._last_announce + gap, self._epoch.started + self.policy.max_age]
        if self._digests:
            deadlines.append(self._first_unsigned_at + self.policy.checkpoint_interval)
        return min(deadlines)
