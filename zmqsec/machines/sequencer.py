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

from .events import Delivered, Event, Gap, Missing, ReceiverPolicy, Rejected


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
    arrived: float
    digest: bytes


class HoldCount:
    """How many frames, and how many bytes, are held: by one run, or by every run of a reader together (the
    bounds of the reader's policy apply to that total)."""

    __slots__ = ("frames", "bytes", "locked_bytes")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.locked_bytes = 0  # of those, the ciphertext of frames awaiting their key (anyone can send those)

    def add(self, frames: int, size: int, locked: bool = False) -> None:
        """Count frames and bytes in (or out, negative)."""
        self.frames += frames
        self.bytes += size
        if locked:
            self.locked_bytes += size

    def remove(self, other: "HoldCount") -> None:
        """What ``other`` counted is no longer held."""
        self.frames -= other.frames
        self.bytes -= other.bytes
        self.locked_bytes -= other.locked_bytes


class Sequencer:
    """The frames of one stream id between arrival and delivery."""

    def __init__(self, stream: bytes, stream_id: bytes, policy: ReceiverPolicy,
                 last_delivered: int | None = None, total: HoldCount | None = None) -> None:
        self.stream, self.stream_id, self.policy = stream, stream_id, policy
        self.last_delivered = last_delivered  # None: joined without a position (the first frame starts it)
        self._hole: tuple[int, float] | None = None  # (first missing seq, since when) while a repair may fill it
        self._asked: tuple[int, int] | None = None  # the range last reported Missing
        self._lost_until = 0  # nothing up to here can be repaired any more (give_up): never wait for it
        self._locked: list[_Locked] = []
        self._pending: dict[int, list[_Candidate]] = {}
        self._vouched: dict[int, bytes] = {}  # seq -> digest from a verified checkpoint
        self._early: list[tuple[Checkpoint, float]] = []  # checkpoints before the publisher is known
        self.hold = HoldCount()  # frames locked or pending, and their ciphertext or payload bytes
        self._total = total or HoldCount()

    def _held(self, change: int, size: int, locked: bool = False) -> None:
        self.hold.add(change, size, locked)
        self._total.add(change, size, locked)

    def forget(self) -> None:
        """This run's state is dropped: what it held no longer counts."""
        self._total.remove(self.hold)
        self.hold = HoldCount()

    def _reject(self, reason: RejectReason, detail: str, seq: int | None = None) -> Rejected:
        return Rejected(reason, detail, self.stream_id, seq)

    def delivered_already(self, seq: int) -> bool:
        """Is ``seq`` at or below the last delivered sequence number (a replay or a straggler)?"""
        return self.last_delivered is not None and seq <= self.last_delivered

    def lock(self, frame: DataFrame, digest: bytes, now: float) -> None:
        """Hold a frame until its epoch key arrives."""
        self._locked.append(_Locked(frame, now, digest))
        self._held(1, len(frame.ciphertext), locked=True)

    def unlock(self, has_key) -> list[_Locked]:
        """Take the held frames whose epoch ``has_key(epoch)`` now; the others stay."""
        ready = [entry for entry in self._locked if has_key(entry.frame.epoch)]
        if ready:
            self._locked = [entry for entry in self._locked if not has_key(entry.frame.epoch)]
            self._held(-len(ready), -sum(len(e.frame.ciphertext) for e in ready), locked=True)
        return ready

    def opened(self, seq: int, digest: bytes, payload: bytes, epoch: int, now: float) -> Rejected | None:
        """A decrypted frame: hold it until a checkpoint vouches for it, or refuse it."""
        candidates = self._pending.setdefault(seq, [])
        if any(c.digest == digest for c in candidates):
            return self._reject(RejectReason.DUPLICATE, f"sequence {seq} received twice", seq)
        if len(candidates) >= self.policy.max_candidates:
            return self._reject(RejectReason.OVERLOADED, f"too many frames claim sequence {seq}", seq)
        candidates.append(_Candidate(digest, payload, epoch, now))
        self._held(1, len(payload))
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

    def _waits(self, first: int, last: int, now: float, events: list[Event]) -> bool:
        """A hole ``first..last`` before what could be delivered: wait for its repair while ``repair_timeout``
        allows (from when it opened until it is filled), reporting :class:`Missing`; False once it is over."""
        if self.policy.repair_timeout <= 0:
            return False
        if self._hole is None:
            self._hole = (first, now)
        if now - self._hole[1] >= self.policy.repair_timeout:
            return False
        if self._asked is None or self._asked[1] < last:
            self._asked = (first, last)
            events.append(Missing(self.stream, self.stream_id, first, last))
        return True

    def give_up(self, first: int, last: int) -> None:
        """No server holds ``first..last``: stop waiting for it, now or when the hole opens (the next release
        reports that part as a gap, and waits on for the rest)."""
        self._lost_until = max(self._lost_until, last)

    def _skip_lost(self, before: int, events: list[Event]) -> None:
        """Move past the part of the hole before ``before`` that was given up: report it as a gap."""
        first = self.last_delivered + 1
        if first <= self._lost_until and first < before:
            upto = min(self._lost_until, before - 1)
            events.append(Gap(self.stream_id, first, upto - first + 1))
            self.last_delivered = upto

    def _skip_to(self, seq: int, events: list[Event]) -> None:
        """Deliver past a hole: report it as a gap."""
        if self.last_delivered is not None and seq > self.last_delivered + 1:
            events.append(Gap(self.stream_id, self.last_delivered + 1, seq - self.last_delivered - 1))
        self._hole = self._asked = None

    def _passes(self, seq: int, now: float, events: list[Event]) -> bool:
        """May ``seq`` be delivered next?  Past what was given up at once; past a hole once its repair timed out."""
        if self.last_delivered is None or seq <= self.last_delivered + 1:
            return True
        self._skip_lost(seq, events)
        if seq > self.last_delivered + 1:
            if self._waits(self.last_delivered + 1, seq - 1, now, events):
                return False
            self._skip_to(seq, events)
        return True

    def release(self, publisher_dn: str, now: float) -> list[Event]:
        """Deliver, in sequence order, every held frame a checkpoint vouched for; a hole before it is waited
        for (and reported :class:`Missing`) while a repair may fill it."""
        events: list[Event] = []
        ready = sorted(seq for seq in self._pending if seq in self._vouched)
        if not ready:
            if self.last_delivered is None or self.policy.repair_timeout <= 0:
                return events  # without repair, frames vouched for but never seen are reported with the next delivery
            locked = {e.frame.seq for e in self._locked}
            beyond = [seq for seq in self._vouched if seq > self.last_delivered and seq not in locked]
            if beyond and self._passes(max(beyond) + 1, now, events):
                # Vouched frames that never came, and the repair gave up: reported lost; move past them.
                self.last_delivered = max(beyond)
                self._forget_vouched()
            return events
        if self.last_delivered is None:
            # Joined without a position: the run starts at the first frame received, not the first vouched for
            # (the frames before it, whose checkpoint was lost, are a hole that repair fills).
            self.last_delivered = min(self._pending) - 1
        # Never overtake a genuine frame still waiting for its key (the checkpoint vouches for its bytes; junk
        # blocks nothing), nor a decrypted one whose checkpoint may come after a later one (two paths, a
        # reordering relay): it waits at most hold_timeout, and only a key holder can make one.
        undecided = min((s for s in self._pending if s not in self._vouched and s > self.last_delivered), default=None)
        blocked = min((e.frame.seq for e in self._locked if self._vouched.get(e.frame.seq) == e.digest),
                      default=undecided)
        blocked = blocked if undecided is None else min(blocked, undecided)
        for seq in ready:
            if blocked is not None and seq > blocked:
                if blocked == undecided:  # a checkpoint lost or late: a repair brings it (and the frames)
                    self._waits(self.last_delivered + 1, seq - 1, now, events)
                break
            if not self._passes(seq, now, events):
                break
            expected = self._vouched.pop(seq)
            candidates = self._pending.pop(seq)
            self._held(-len(candidates), -sum([len(c.payload) for c in candidates]))
            for cand in candidates:
                if cand.digest != expected:
                    events.append(self._reject(RejectReason.FORGED, "frame differs from what the publisher signed "
                                               "(insider forgery or alteration)", seq))
                    continue
                self.last_delivered = seq
                events.append(Delivered(self.stream, self.stream_id, cand.epoch, seq, cand.payload, publisher_dn))
        if events and self.last_delivered is not None:
            self._forget_vouched()
        if self._hole is not None and ((not self._pending and not self._vouched)
                                       or (self._asked is not None and self.last_delivered >= self._asked[1])):
            self._hole = self._asked = None  # filled, or nothing beyond what was delivered: no hole any more
        return events

    def _forget_vouched(self) -> None:
        """Vouched sequences we never received and can no longer deliver are dropped from memory."""
        for seq in [s for s in self._vouched if s <= self.last_delivered]:
            del self._vouched[seq]

    def expire(self, now: float) -> list[Event]:
        """Refuse what waited too long for a key or for a checkpoint."""
        p, events = self.policy, []
        stale = [e for e in self._locked if now - e.arrived >= p.key_timeout]
        if stale:
            self._locked = [e for e in self._locked if now - e.arrived < p.key_timeout]
            self._held(-len(stale), -sum(len(e.frame.ciphertext) for e in stale), locked=True)
            events += [self._reject(RejectReason.NO_KEY, f"epoch {e.frame.epoch}: no key arrived (not authorized, "
                                    "or revoked)", e.frame.seq) for e in stale]
        # A frame a checkpoint vouched for waits for the hole before it; only unvouched ones expire.
        for seq in [s for s, cands in self._pending.items()
                    if s not in self._vouched and all(now - c.arrived >= p.hold_timeout for c in cands)]:
            candidates = self._pending.pop(seq)
            self._held(-len(candidates), -sum(len(c.payload) for c in candidates))
            events += [self._reject(RejectReason.UNVERIFIED, "no checkpoint from the publisher vouched for this frame",
                                    seq) for _ in candidates]
        self._early = [(c, t) for c, t in self._early if now - t < p.key_timeout]
        return events
