"""Ordering and release of one publisher run's data frames (docs/PROTOCOL.md §5, §6.2).

A data frame waits here until its epoch key is known (``awaiting key``), then,
decrypted, until a checkpoint signed by the publisher lists its digest
(``pending``); it is released in sequence order, never past a genuine frame
still waiting for its key, and a hole in the sequence is reported as a gap.
Everything held is bounded (the reader's policy) and expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from zmqsec.errors import RejectReason
from zmqsec.protocol.frames import Checkpoint, DataFrame
from zmqsec.protocol.primitives import DIGEST_BYTES

from .events import Delivered, Event, Gap, ReceiverPolicy, Rejected


@dataclass(slots=True)
class _Candidate:
    """A decrypted frame claiming a sequence number, until a checkpoint says whether it is the publisher's."""

    digest: bytes
    payload: bytes
    epoch: int
    arrived: float


@dataclass(slots=True)
class _Locked:
    """A frame whose epoch key has not arrived yet."""

    frame: DataFrame
    body: bytes
    arrived: float
    digest: bytes


class Sequencer:
    """The frames of one stream id between arrival and delivery."""

    def __init__(self, stream: bytes, stream_id: bytes, policy: ReceiverPolicy) -> None:
        self.stream, self.stream_id, self.policy = stream, stream_id, policy
        self.last_delivered: int | None = None
        self._locked: list[_Locked] = []
        self._pending: dict[int, list[_Candidate]] = {}
        self._vouched: dict[int, bytes] = {}  # seq -> digest from a verified checkpoint
        self._early: list[tuple[Checkpoint, float]] = []  # checkpoints before the publisher is known
        self.held = 0  # frames locked or pending

    def _reject(self, reason: RejectReason, detail: str, seq: int | None = None) -> Rejected:
        return Rejected(reason, detail, self.stream_id, seq)

    def delivered_already(self, seq: int) -> bool:
        """Is ``seq`` at or below the last delivered sequence number (a replay or a straggler)?"""
        return self.last_delivered is not None and seq <= self.last_delivered

    def lock(self, frame: DataFrame, body: bytes, digest: bytes, now: float) -> None:
        """Hold a frame until its epoch key arrives."""
        self._locked.append(_Locked(frame, body, now, digest))
        self.held += 1

    def unlock(self, has_key) -> list[_Locked]:
        """Take the held frames whose epoch ``has_key(epoch)`` now; the others stay."""
        ready = [entry for entry in self._locked if has_key(entry.frame.epoch)]
        if ready:
            self._locked = [entry for entry in self._locked if not has_key(entry.frame.epoch)]
            self.held -= len(ready)
        return ready

    def opened(self, seq: int, digest: bytes, payload: bytes, epoch: int, now: float) -> Rejected | None:
        """A decrypted frame: hold it until a checkpoint vouches for it, or refuse it."""
        candidates = self._pending.setdefault(seq, [])
        if any(c.digest == digest for c in candidates):
            return self._reject(RejectReason.DUPLICATE, f"sequence {seq} received twice", seq)
        if len(candidates) >= self.policy.max_candidates:
            return self._reject(RejectReason.OVERLOADED, f"too many frames claim sequence {seq}", seq)
        candidates.append(_Candidate(digest, payload, epoch, now))
        self.held += 1
        return None

    def vouched_for(self, seq: int) -> bool:
        """Has a checkpoint already listed ``seq`` (so a frame that just arrived may be released)?"""
        return seq in self._vouched

    def hold_early(self, checkpoint: Checkpoint, now: float) -> None:
        """A checkpoint that came before the publisher was known (kept a few seconds, at most 64)."""
        if len(self._early) < 64:
            self._early.append((checkpoint, now))

    def take_early(self) -> list[Checkpoint]:
        """The checkpoints held until the publisher was known."""
        early, self._early = self._early, []
        return [c for c, _ in early]

    def vouch(self, checkpoint: Checkpoint) -> None:
        """A verified checkpoint: the digests it lists are the publisher's frames."""
        for i in range(checkpoint.count):
            seq = checkpoint.first_seq + i
            if not self.delivered_already(seq):
                self._vouched[seq] = checkpoint.digests[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES]
        # Vouched frames that never arrive (a revoked reader holds no key for them) must not pile up.
        excess = len(self._vouched) - self.policy.max_held
        if excess > 0:
            for seq in sorted(self._vouched)[:excess]:
                del self._vouched[seq]

    def release(self, publisher_dn: str) -> list[Event]:
        """Deliver, in sequence order, every held frame a checkpoint vouched for."""
        events: list[Event] = []
        ready = sorted(seq for seq in self._pending if seq in self._vouched)
        if not ready:
            return events
        # Never overtake a genuine frame still waiting for its key (the checkpoint vouches for its bytes);
        # junk claiming a sequence number blocks nothing.
        blocked = min((e.frame.seq for e in self._locked if self._vouched.get(e.frame.seq) == e.digest), default=None)
        for seq in ready:
            if blocked is not None and seq > blocked:
                break
            expected = self._vouched.pop(seq)
            candidates = self._pending.pop(seq)
            self.held -= len(candidates)
            for cand in candidates:
                if cand.digest != expected:
                    events.append(self._reject(RejectReason.FORGED, "frame differs from what the publisher signed "
                                               "(insider forgery or alteration)", seq))
                    continue
                if self.last_delivered is not None and seq > self.last_delivered + 1:
                    events.append(Gap(self.stream_id, self.last_delivered + 1, seq - self.last_delivered - 1))
                self.last_delivered = seq
                events.append(Delivered(self.stream, self.stream_id, cand.epoch, seq, cand.payload, publisher_dn))
        # Vouched sequences we never received and can no longer deliver are dropped from memory.
        if events and self.last_delivered is not None:
            for seq in [s for s in self._vouched if s <= self.last_delivered]:
                del self._vouched[seq]
        return events

    def expire(self, now: float) -> list[Event]:
        """Refuse what waited too long for a key or for a checkpoint."""
        p, events = self.policy, []
        stale = [e for e in self._locked if now - e.arrived >= p.key_timeout]
        if stale:
            self._locked = [e for e in self._locked if now - e.arrived < p.key_timeout]
            self.held -= len(stale)
            events += [self._reject(RejectReason.NO_KEY, f"epoch {e.frame.epoch}: no key arrived (not authorized, "
                                    "or revoked)", e.frame.seq) for e in stale]
        for seq in [s for s, cands in self._pending.items() if all(now - c.arrived >= p.hold_timeout for c in cands)]:
            candidates = self._pending.pop(seq)
            self.held -= len(candidates)
            events += [self._reject(RejectReason.UNVERIFIED, "no checkpoint from the publisher vouched for this frame",
                                    seq) for _ in candidates]
        self._early = [(c, t) for c, t in self._early if now - t < p.key_timeout]
        return events
