"""The reader's state machine: keys, verification, ordering, loss and replay.  No sockets.

Input: ``frame_received(parts, now)`` for every ZeroMQ message and ``tick(now)``
as time passes.  Output: a list of events -- :class:`Delivered`,
:class:`Rejected`, :class:`Gap`, :class:`Restarted`, :class:`KeyAccepted` --
for a driver to act on.  A data frame is delivered only when

1. its epoch key came in an announcement whose signature and publisher
   certificate verified, and which decrypted to a confirmed key (with our
   private key, or with the key of our reader group, which came the same way);
2. AES-GCM opened it (topic, stream identity, epoch and sequence are bound);
3. a checkpoint signed by that same publisher lists its digest (so an insider
   holding the data key cannot forge or alter frames);
4. its sequence number is new (replays and duplicates are dropped), in order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.dn import DnAllowList
from keys.pemfiles import Credential
from keys.trust import CrlPolicy, TrustStore

from .announce import (
    AnnouncementRejected,
    Publisher,
    open_announcement,
    open_group_announcement,
    verify_announcement,
)
from .checkpoint import checkpoint_valid
from .frames import Announcement, Checkpoint, DataFrame, FrameError, GroupAnnouncement, decode, encode, stream_name
from .groups import kek_id, reader_bits
from .primitives import DIGEST_BYTES, associated_data, frame_digest, nonce

log = logging.getLogger("zmqsec.reader")


@dataclass(frozen=True)
class Delivered:
    stream: bytes
    stream_id: bytes
    epoch: int
    seq: int
    payload: bytes
    publisher_dn: str

    @property
    def message_id(self) -> str:
        """Unique per message and stable on every retry: ``<stream id hex>-<seq>`` (SSM's empa-id)."""
        return f"{self.stream_id.hex()}-{self.seq}"


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str
    stream_id: bytes | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Gap:
    stream_id: bytes
    first_missing: int
    count: int


@dataclass(frozen=True)
class Restarted:
    stream: bytes
    old_stream_id: bytes
    new_stream_id: bytes
    publisher_dn: str


@dataclass(frozen=True)
class KeyAccepted:
    stream_id: bytes
    epoch: int
    publisher_dn: str


Event = Delivered | Rejected | Gap | Restarted | KeyAccepted


@dataclass(frozen=True)
class ReceiverPolicy:
    """Bounds on what a reader holds while it waits (times in seconds)."""

    hold_timeout: float = 5.0  # a decrypted frame waits this long for its checkpoint
    key_timeout: float = 5.0  # a frame waits this long for its epoch's key
    max_held: int = 100_000  # frames held in all (pending + awaiting key)
    keep_epochs: int = 4  # old epoch keys kept for stragglers
    max_streams: int = 8  # unknown stream identities buffered at once
    max_candidates: int = 4  # different frames claiming one sequence number
    keep_group_keys: int = 4  # group keys kept (ours change when our group's membership does)
    max_awaiting_group: int = 4  # epoch announcements held until our group's key arrives


@dataclass
class _Pending:
    digest: bytes
    payload: bytes
    epoch: int
    arrived: float


@dataclass
class _Stream:
    stream_id: bytes
    name: bytes
    created: float
    publisher: Publisher | None = None
    keys: OrderedDict = field(default_factory=OrderedDict)  # epoch -> AESGCM
    awaiting_key: list = field(default_factory=list)  # (DataFrame, body, arrived, digest)
    early_checkpoints: list = field(default_factory=list)  # (Checkpoint, arrived), before the publisher is known
    pending: dict = field(default_factory=dict)  # seq -> list[_Pending]
    vouched: dict = field(default_factory=dict)  # seq -> digest from a verified checkpoint
    last_delivered: int | None = None
    seen_announcements: OrderedDict = field(default_factory=OrderedDict)  # fingerprint -> accepted?, bounded
    group_keys: dict = field(default_factory=dict, repr=False)  # KEK id -> (GroupKey, signer certificate), bounded
    awaiting_group: list = field(default_factory=list)  # (Announcement, fingerprint, arrived): need a group key
    reported_no_group: OrderedDict = field(default_factory=OrderedDict)  # fingerprints refused once already


def _fingerprint(frame: Announcement | GroupAnnouncement) -> bytes:
    """Identifies an announcement by everything it carries, header included (msgpack delimits every field):
    a copy under another topic or epoch/generation is another announcement, and its refusal poisons nothing."""
    return hashlib.sha256(msgpack.packb(encode(frame))).digest()


class StreamReceiver:
    """All streams one reader follows (one per stream name and publisher run)."""

    def __init__(
        self,
        credential: Credential,
        trust: TrustStore,
        *,
        allowed_publishers: DnAllowList | None = None,
        crl: CrlPolicy = CrlPolicy.REQUIRE,
        policy: ReceiverPolicy | None = None,
        wall_clock=None,
    ) -> None:
        self.credential = credential
        self.trust = trust
        self.allowed_publishers = allowed_publishers
        self.crl = crl
        self.policy = policy or ReceiverPolicy()
        self.wall_clock = wall_clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.streams: dict[bytes, _Stream] = {}
        self.current: dict[bytes, bytes] = {}  # stream name -> stream id of the live publisher run
        self.latest_signed: dict[bytes, dt.datetime] = {}  # stream name -> newest announcement signingTime
        self.retired: OrderedDict = OrderedDict()  # stream ids of earlier runs: never accepted again
        self.counters: Counter = Counter()
        self._held = 0
        self._bits = reader_bits(credential.certificate)  # which reader groups are ours

    # -- entry points ------------------------------------------------------------

    def frame_received(self, parts: list[bytes], now: float) -> list[Event]:
        try:
            frame = decode(parts)
        except FrameError as exc:
            return [self._reject(exc.reason, str(exc))]
        if isinstance(frame, DataFrame):
            return self._on_data(frame, parts[1], now)
        if isinstance(frame, Checkpoint):
            return self._on_checkpoint(frame, now)
        self.counters["announcement-bytes"] += len(parts[0]) + len(parts[1])  # what key distribution costs a reader
        if isinstance(frame, GroupAnnouncement):
            return self._on_group(frame, now)
        return self._on_announcement(frame, now)

    def tick(self, now: float) -> list[Event]:
        """Expire frames that waited too long for a key or a checkpoint."""
        events: list[Event] = []
        p = self.policy
        for st in self.streams.values():
            keep = []
            for entry in st.awaiting_key:
                frame, arrived = entry[0], entry[2]
                if now - arrived >= p.key_timeout:
                    self._held -= 1
                    events.append(self._reject("no-key", f"epoch {frame.epoch}: no key arrived (not authorized, or revoked)",
                                               st.stream_id, frame.seq))
                else:
                    keep.append(entry)
            st.awaiting_key = keep
            for seq in [s for s, cands in st.pending.items() if all(now - c.arrived >= p.hold_timeout for c in cands)]:
                for _ in st.pending.pop(seq):
                    self._held -= 1
                    events.append(self._reject("unverified", "no checkpoint from the publisher vouched for this frame",
                                               st.stream_id, seq))
            st.early_checkpoints = [(c, t) for c, t in st.early_checkpoints if now - t < p.key_timeout]
            for frame, fingerprint, arrived in [e for e in st.awaiting_group if now - e[2] >= p.key_timeout]:
                st.awaiting_group.remove((frame, fingerprint, arrived))
                if fingerprint not in st.reported_no_group:  # once per announcement: re-announcements are checked quietly
                    st.reported_no_group[fingerprint] = None
                    while len(st.reported_no_group) > 64:
                        st.reported_no_group.popitem(last=False)
                    events.append(self._reject("not-a-recipient", f"epoch {frame.epoch}: wrapped only for reader groups "
                                               "whose keys we do not hold (not authorized, or revoked)", st.stream_id))
            events += self._release(st)
        return events

    # -- frames -------------------------------------------------------------------

    def _stream(self, frame, now: float) -> _Stream | None:
        """The state of the frame's stream id, created on first sight; None for a retired run."""
        if frame.stream_id in self.retired:
            return None
        st = self.streams.get(frame.stream_id)
        if st is None:
            if len(self.streams) >= self.policy.max_streams:
                self._evict(now)
            st = self.streams[frame.stream_id] = _Stream(frame.stream_id, stream_name(frame.topic), now)
        return st

    def _evict(self, now: float) -> None:
        """Forget the oldest stream that is not a live publisher run."""
        live = set(self.current.values())
        victims = sorted((st.created, sid) for sid, st in self.streams.items() if sid not in live)
        if victims:
            st = self.streams.pop(victims[0][1])
            self._held -= len(st.awaiting_key) + sum(len(c) for c in st.pending.values())

    def _on_data(self, frame: DataFrame, body: bytes, now: float) -> list[Event]:
        st = self._stream(frame, now)
        if st is None:
            return [self._reject("retired-stream", "frame of an earlier publisher run (replay)", frame.stream_id, frame.seq)]
        if st.last_delivered is not None and frame.seq <= st.last_delivered:
            return [self._reject("replayed-sequence", f"sequence {frame.seq} already delivered", st.stream_id, frame.seq)]
        if self._held >= self.policy.max_held:
            return [self._reject("overloaded", "too many frames held waiting for keys or checkpoints", st.stream_id, frame.seq)]
        aead = st.keys.get(frame.epoch)
        if aead is None:
            st.awaiting_key.append((frame, body, now, frame_digest(frame.topic, body)))
            self._held += 1
            return []
        return self._open(st, frame, body, aead, now)

    def _open(self, st: _Stream, frame: DataFrame, body: bytes, aead: AESGCM, now: float) -> list[Event]:
        try:
            payload = aead.decrypt(nonce(frame.epoch, frame.seq), frame.ciphertext,
                                   associated_data(frame.topic, frame.stream_id, frame.epoch, frame.seq))
        except InvalidTag:
            return [self._reject("decrypt-failed", f"epoch {frame.epoch}: AES-GCM authentication failed (altered or forged)",
                                 st.stream_id, frame.seq)]
        digest = frame_digest(frame.topic, body)
        candidates = st.pending.setdefault(frame.seq, [])
        if any(c.digest == digest for c in candidates):
            return [self._reject("duplicate", f"sequence {frame.seq} received twice", st.stream_id, frame.seq)]
        if len(candidates) >= self.policy.max_candidates:
            return [self._reject("overloaded", f"too many frames claim sequence {frame.seq}", st.stream_id, frame.seq)]
        candidates.append(_Pending(digest, payload, frame.epoch, now))
        self._held += 1
        # Frames normally come before their checkpoint: until this one is vouched for, nothing new can be released.
        return self._release(st) if frame.seq in st.vouched else []

    def _on_checkpoint(self, frame: Checkpoint, now: float) -> list[Event]:
        st = self._stream(frame, now)
        if st is None:
            return [self._reject("retired-stream", "checkpoint of an earlier publisher run (replay)", frame.stream_id)]
        if st.publisher is None:
            if len(st.early_checkpoints) < 64:
                st.early_checkpoints.append((frame, now))
            return []
        return self._apply_checkpoint(st, frame)

    def _apply_checkpoint(self, st: _Stream, frame: Checkpoint) -> list[Event]:
        if not checkpoint_valid(frame, st.publisher.certificate):
            return [self._reject("bad-checkpoint", "checkpoint signature does not verify with the publisher's key", st.stream_id)]
        for i in range(frame.count):
            seq = frame.first_seq + i
            if st.last_delivered is None or seq > st.last_delivered:
                st.vouched[seq] = frame.digests[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES]
        # Vouched frames that never arrive (a revoked reader holds no key for them) must not pile up.
        excess = len(st.vouched) - self.policy.max_held
        if excess > 0:
            for seq in sorted(st.vouched)[:excess]:
                del st.vouched[seq]
        return self._release(st)

    def _on_announcement(self, frame: Announcement, now: float) -> list[Event]:
        if frame.stream_id in self.retired:
            return [self._reject("retired-stream", "announcement of an earlier publisher run (replay)", frame.stream_id)]
        fingerprint = _fingerprint(frame)
        st = self.streams.get(frame.stream_id)
        if st is not None and fingerprint in st.seen_announcements:
            accepted = st.seen_announcements[fingerprint]
            if not accepted or frame.epoch in st.keys:
                return []  # a periodic re-announcement of a key we hold (or were refused): costs nothing
        if st is not None and len(st.keys) >= self.policy.keep_epochs and frame.epoch < min(st.keys):
            return [self._reject("stale-epoch", f"epoch {frame.epoch} is older than every key held", frame.stream_id)]
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return [publisher]
        st = self._stream(frame, now)
        events: list[Event] = []
        name = st.name
        previous = self.current.get(name)
        if st.publisher is None and previous is not None and previous != st.stream_id:
            # A new run claims the stream: only one signed after everything the live run announced.
            latest = self.latest_signed.get(name)
            if publisher.signed_at is None or (latest is not None and publisher.signed_at < latest):
                self._forget(st.stream_id)
                return [self._reject("stale-restart", "announcement of a publisher run older than the live one (replay)",
                                     frame.stream_id)]
        if st.publisher is not None and st.publisher.certificate != publisher.certificate:
            return [self._reject("publisher-changed", f"stream already bound to {st.publisher.dn}, not {publisher.dn}",
                                 st.stream_id)]
        try:
            # Only group keys this same publisher sent: another allowed publisher cannot shadow them.
            groups = {kid: g.key for kid, (g, signer) in st.group_keys.items() if signer == publisher.certificate}
            epoch_key = open_announcement(frame, publisher, self.credential, groups)
        except AnnouncementRejected as exc:
            if exc.reason == "no-group-key":
                # Our group's key may still be on its way (it has its own topic): hold, do not remember.
                if all(f != fingerprint for _, f, _ in st.awaiting_group):
                    st.awaiting_group.append((frame, fingerprint, now))
                    del st.awaiting_group[:-self.policy.max_awaiting_group]
                return []
            self._remember(st, fingerprint, False)
            return [self._reject(exc.reason, str(exc), st.stream_id)]
        self._remember(st, fingerprint, True)
        if st.publisher is None:
            st.publisher = publisher
            self.current[name] = st.stream_id
            if previous is not None and previous != st.stream_id:
                events.append(Restarted(name, previous, st.stream_id, publisher.dn))
                self.counters["restart"] += 1
                self._forget(previous)
        if publisher.signed_at is not None:
            self.latest_signed[name] = max(publisher.signed_at, self.latest_signed.get(name, publisher.signed_at))
        if frame.epoch not in st.keys:
            st.keys[frame.epoch] = AESGCM(epoch_key.key)
            while len(st.keys) > self.policy.keep_epochs:
                del st.keys[min(st.keys)]  # the oldest epoch, not the oldest arrival
            events.append(KeyAccepted(st.stream_id, frame.epoch, publisher.dn))
            log.info("stream %s epoch %d: key accepted from %s", name.decode(errors="replace"), frame.epoch, publisher.dn)
        # Frames that were waiting for this key, then checkpoints that were waiting for the publisher.
        waiting, st.awaiting_key = st.awaiting_key, []
        for entry in waiting:
            data, body, arrived, _ = entry
            self._held -= 1
            aead = st.keys.get(data.epoch)
            if aead is None:
                st.awaiting_key.append(entry)
                self._held += 1
            else:
                events += self._open(st, data, body, aead, arrived)
        early, st.early_checkpoints = st.early_checkpoints, []
        for checkpoint, _ in early:
            events += self._apply_checkpoint(st, checkpoint)
        return events

    def _on_group(self, frame: GroupAnnouncement, now: float) -> list[Event]:
        """A group key: only ours is opened; then epoch announcements that waited for it are retried."""
        if frame.stream_id in self.retired:
            return [self._reject("retired-stream", "group announcement of an earlier publisher run (replay)", frame.stream_id)]
        if not self._bits.startswith(frame.tag):
            self.counters["other-group"] += 1  # multicast carries every group; not ours is not an error
            return []
        fingerprint = _fingerprint(frame)
        st = self.streams.get(frame.stream_id)
        key_id = kek_id(frame.tag, frame.generation)
        if st is not None and fingerprint in st.seen_announcements:
            if not st.seen_announcements[fingerprint] or key_id in st.group_keys:
                return []  # a re-announcement of a group key we hold (or were refused): costs nothing
        if st is not None and len(st.group_keys) >= self.policy.keep_group_keys and \
                frame.generation < min(g.generation for g, _ in st.group_keys.values()):
            return [self._reject("stale-group-key", f"group key generation {frame.generation} is older than every one "
                                 "held (replay)", frame.stream_id)]
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return [publisher]
        st = self._stream(frame, now)
        if st.publisher is not None and st.publisher.certificate != publisher.certificate:
            return [self._reject("publisher-changed", f"stream already bound to {st.publisher.dn}, not {publisher.dn}",
                                 st.stream_id)]
        try:
            group = open_group_announcement(frame, self.credential)
        except AnnouncementRejected as exc:
            self._remember(st, fingerprint, False)
            return [self._reject(exc.reason, str(exc), st.stream_id)]
        self._remember(st, fingerprint, True)
        st.group_keys[group.key_id] = (group, publisher.certificate)
        while len(st.group_keys) > self.policy.keep_group_keys:  # the lowest generation goes, not the oldest arrival
            del st.group_keys[min(st.group_keys, key=lambda kid: st.group_keys[kid][0].generation)]
        log.info("stream %s: key of reader group %r generation %d accepted", st.name.decode(errors="replace"),
                 group.tag.decode(), group.generation)
        events: list[Event] = []
        waiting, st.awaiting_group = st.awaiting_group, []
        for announcement, _, arrived in waiting:
            events += self._on_announcement(announcement, arrived)
        return events

    def _verify(self, frame: Announcement | GroupAnnouncement) -> Publisher | Rejected:
        """Signature and publisher certificate, before any private-key operation (§4.4 step 2)."""
        try:
            return verify_announcement(frame, self.trust, allowed_publishers=self.allowed_publishers,
                                       crl=self.crl, at=self.wall_clock())
        except AnnouncementRejected as exc:
            return self._reject(exc.reason, str(exc), frame.stream_id)

    @staticmethod
    def _remember(st: _Stream, fingerprint: bytes, accepted: bool) -> None:
        st.seen_announcements[fingerprint] = accepted
        while len(st.seen_announcements) > 64:
            st.seen_announcements.popitem(last=False)

    def _forget(self, stream_id: bytes) -> None:
        """Retire a stream id: its state goes, and it is never accepted again (replays of that run)."""
        old = self.streams.pop(stream_id, None)
        if old is not None:
            self._held -= len(old.awaiting_key) + sum(len(c) for c in old.pending.values())
        if self.current.get(old.name if old else b"") == stream_id:
            return  # never retire the live run (only its replacement is retired by callers)
        self.retired[stream_id] = None
        while len(self.retired) > 256:
            self.retired.popitem(last=False)

    # -- delivery ---------------------------------------------------------------

    def _release(self, st: _Stream) -> list[Event]:
        """Deliver, in sequence order, every held frame a checkpoint vouched for."""
        events: list[Event] = []
        ready = sorted(seq for seq in st.pending if seq in st.vouched)
        if not ready:
            return events
        # Never overtake a genuine frame still waiting for its key (the checkpoint vouches for its bytes);
        # junk claiming a sequence number blocks nothing.
        blocked = min((f.seq for f, _, _, digest in st.awaiting_key if st.vouched.get(f.seq) == digest), default=None)
        for seq in ready:
            if blocked is not None and seq > blocked:
                break
            expected = st.vouched.pop(seq)
            for cand in st.pending.pop(seq):
                self._held -= 1
                if cand.digest != expected:
                    events.append(self._reject("forged", "frame differs from what the publisher signed (insider forgery or alteration)",
                                               st.stream_id, seq))
                    continue
                if st.last_delivered is not None and seq > st.last_delivered + 1:
                    events.append(Gap(st.stream_id, st.last_delivered + 1, seq - st.last_delivered - 1))
                    self.counters["gap"] += seq - st.last_delivered - 1
                st.last_delivered = seq
                self.counters["delivered"] += 1
                events.append(Delivered(st.name, st.stream_id, cand.epoch, seq, cand.payload, st.publisher.dn))
        # Vouched sequences we never received and can no longer deliver are dropped from memory.
        if events and st.last_delivered is not None:
            for seq in [s for s in st.vouched if s <= st.last_delivered]:
                del st.vouched[seq]
        return events

    def _reject(self, reason: str, detail: str, stream_id: bytes | None = None, seq: int | None = None) -> Rejected:
        self.counters[f"rejected:{reason}"] += 1
        return Rejected(reason, detail, stream_id, seq)
