"""The reader's state machine (docs/PROTOCOL.md §6.2): keys, verification, ordering, loss and replay.

No sockets, no logging.  Input: ``frame_received(parts, now)`` for every
ZeroMQ message and ``tick(now)`` as time passes.  Output: a list of events
(:mod:`.events`) for a driver to act on.  A data frame is delivered only when

1. its epoch key came in an announcement whose signature and publisher
   certificate verified, and which decrypted to a confirmed key (with our
   private key, or with the key of our reader group, which came the same way);
2. AES-GCM opened it (topic, stream identity, epoch and sequence are bound);
3. a checkpoint signed by that same publisher lists its digest (so an insider
   holding the data key cannot forge or alter frames);
4. its sequence number is new (replays and duplicates are dropped), in order.

The parts: :mod:`.runs` (which publisher run is live), :mod:`.keyring` (the
keys of a run), :mod:`.sequencer` (the frames of a run until delivery).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from zmqsec.errors import RejectReason
from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import fingerprint
from zmqsec.keys.trust import CrlPolicy, TrustStore
from zmqsec.protocol.checkpoint import checkpoint_valid, run_valid
from zmqsec.protocol.datacipher import OpenFailed
from zmqsec.protocol.frames import (
    Announcement,
    Checkpoint,
    DataFrame,
    FrameError,
    GroupAnnouncement,
    RunFrame,
    TreeAnnouncement,
    decode,
)
from zmqsec.protocol.groups import reader_bits
from zmqsec.protocol.primitives import frame_digest
from zmqsec.protocol.tree import tree_bits

from .events import (
    CatchUp,
    Delivered,
    Event,
    Gap,
    GroupKeyAccepted,
    KeyAccepted,
    Missing,
    ReceiverPolicy,
    Rejected,
    Restarted,
    RunLinked,
    TreeKeysAccepted,
)
from .intake import KeyIntake
from .runs import Run, Runs

__all__ = ["StreamReceiver", "ReceiverPolicy", "Delivered", "Rejected", "Gap", "Restarted", "KeyAccepted",
           "GroupKeyAccepted", "RunLinked", "Missing", "TreeKeysAccepted", "CatchUp", "Event"]


def count(counters: Counter, events: list[Event]) -> list[Event]:
    """Count ``events`` by name: delivered, rejected:<reason>, gap (sequence numbers), restart."""
    for event in events:
        if type(event) is Delivered:
            counters["delivered"] += 1
        elif isinstance(event, Rejected):
            counters[f"rejected:{event.name}"] += 1
        elif isinstance(event, Gap):
            counters["gap"] += event.count
        elif isinstance(event, Restarted):
            counters["restart"] += 1
    return events


class StreamReceiver:
    """All streams one reader follows (one state per stream name and publisher run)."""

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
        self.policy = policy or ReceiverPolicy()
        self.runs = Runs(self.policy)
        self.intake = KeyIntake(credential, trust, self.runs, allowed_publishers=allowed_publishers, crl=crl,
                                wall_clock=wall_clock or (lambda: dt.datetime.now(dt.timezone.utc)),
                                tree_bits=tree_bits(fingerprint(credential.certificate)))
        self.counters: Counter = Counter()  # every event counted by name, in one place (_counted)
        self._bits = reader_bits(credential.certificate)  # which reader groups are ours

    # -- entry points ------------------------------------------------------------------

    def frame_received(self, parts: list[bytes], now: float, replayed: bool = False) -> list[Event]:
        """One ZeroMQ message from the stream, or (``replayed``) from a replay server the reader asked."""
        try:
            frame = decode(parts)
        except FrameError as exc:
            return self._counted([Rejected(exc.reason, str(exc))])
        if replayed and frame.stream_id not in self.runs.expected:
            self.counters["replay-unasked"] += 1  # a run this reader asked nobody for: a server cannot inject it
            return []
        if self.runs.retired(frame.stream_id, replayed):
            return self._counted([Rejected(RejectReason.RETIRED_STREAM, "frame of an earlier publisher run (replay)",
                                           frame.stream_id, getattr(frame, "seq", None))])
        if isinstance(frame, DataFrame):
            return self._counted(self._on_data(frame, parts[1], now, replayed))
        if isinstance(frame, Checkpoint):
            return self._counted(self._on_checkpoint(frame, now, replayed))
        if isinstance(frame, RunFrame):
            return self._counted(self._on_run(frame))
        self.counters["announcement-bytes"] += len(parts[0]) + len(parts[1])  # what key distribution costs a reader
        if isinstance(frame, (GroupAnnouncement, TreeAnnouncement)):
            return self._counted(self._on_keys(frame, now, replayed))
        return self._counted(self._on_announcement(frame, now, replayed))

    def resume(self, stream: bytes, stream_id: bytes, last_seq: int) -> None:
        """The reader's position: it stored ``stream_id`` up to ``last_seq``; delivery continues from there (and
        a later run of ``stream`` is read from its start)."""
        self.runs.resume(stream, stream_id, last_seq)

    def expect(self, stream_id: bytes, first: int) -> None:
        """Replayed frames of ``stream_id`` from ``first`` on were asked for: accept them."""
        self.runs.expect(stream_id, first)

    def repairing(self, stream_id: bytes) -> bool:
        """Were replayed frames of ``stream_id`` asked for (:meth:`expect`)?"""
        return stream_id in self.runs.expected

    def give_up(self, stream_id: bytes, first: int, last: int) -> None:
        """No replay server holds ``first..last`` of ``stream_id``: stop waiting (the gap is reported)."""
        self.runs.give_up(stream_id, first, last)

    def tick(self, now: float) -> list[Event]:
        """Expire frames that waited too long for a key or a checkpoint, and announcements that waited
        for our group's key; ask for our key tree path when keys of it are missing."""
        events: list[Event] = []
        for run in list(self.runs.runs.values()):
            if run.keyring.catch_up_due(now):
                events.append(CatchUp(run.name, run.stream_id, run.keyring.wanted_root()))
            events += run.sequencer.expire(now)
            events += [Rejected(RejectReason.NOT_A_RECIPIENT, f"epoch {frame.epoch}: wrapped only for reader groups "
                                "whose keys we do not hold (not authorized, or revoked)", run.stream_id)
                       for frame in run.keyring.expire_waiting(now)]
            if run.publisher is not None:
                events += run.sequencer.release(run.publisher.dn, now)
        return self._counted(events)

    @property
    def trust(self) -> TrustStore:
        """The CA certificates and CRLs announcements are judged by (a new CRL: assign a new store)."""
        return self.intake.trust

    @trust.setter
    def trust(self, store: TrustStore) -> None:
        """Judge later announcements by ``store``."""
        self.intake.trust = store

    @property
    def held(self) -> int:
        """Frames held in all, waiting for a key or a checkpoint."""
        return self.runs.held

    @property
    def held_bytes(self) -> int:
        """Their bytes (``max_held_bytes`` bounds them)."""
        return self.runs.held_bytes

    def _counted(self, events: list[Event]) -> list[Event]:
        return count(self.counters, events)

    # -- data and checkpoints -------------------------------------------------------------

    def _on_data(self, frame: DataFrame, body: bytes, now: float, replayed: bool) -> list[Event]:
        run = self.runs.open(frame, now, replayed)
        sequencer = run.sequencer
        if replayed:
            low, high = run.replayed or (frame.seq, frame.seq)
            run.replayed = (min(low, frame.seq), max(high, frame.seq))
        if sequencer.delivered_already(frame.seq):
            if replayed or (run.replayed is not None and run.replayed[0] <= frame.seq <= run.replayed[1]):
                return []  # a repair and the live stream overlapping (either first): expected, not a refusal
            return [Rejected(RejectReason.REPLAYED_SEQUENCE, f"sequence {frame.seq} already delivered",
                             run.stream_id, frame.seq)]
        hold, policy = self.runs.hold, self.policy
        if hold.frames >= policy.max_held or hold.bytes + len(body) > policy.max_held_bytes:
            return [Rejected(RejectReason.OVERLOADED, "too many frames or bytes held waiting for keys or checkpoints",
                             run.stream_id, frame.seq)]
        if not run.keyring.has_key(frame.epoch):
            # Anyone can send frames under an epoch nobody announced: they get half the byte budget at most,
            # so that frames we can open always find room (docs/PROTOCOL.md §9).
            if run.keyring.far_ahead(frame.epoch, policy.epochs_ahead):
                return [Rejected(RejectReason.NO_KEY, f"epoch {frame.epoch} is far above every key held (not held)",
                                 run.stream_id, frame.seq)]
            if hold.locked_bytes + len(body) > policy.max_held_bytes // 2:
                return [Rejected(RejectReason.OVERLOADED, "too many bytes held waiting for keys", run.stream_id,
                                 frame.seq)]
            sequencer.lock(frame, frame_digest(frame.topic, body), now)
            return []
        return self._open(run, frame, frame_digest(frame.topic, body), now, replayed)

    def _open(self, run: Run, frame: DataFrame, digest: bytes, now: float, replayed: bool = False) -> list[Event]:
        try:
            payload = run.keyring.key(frame.epoch).open(frame.topic, frame.stream_id, frame.epoch, frame.seq,
                                                        frame.ciphertext)
        except OpenFailed:
            return [Rejected(RejectReason.DECRYPT_FAILED, f"epoch {frame.epoch}: AES-GCM authentication failed "
                             "(altered or forged)", run.stream_id, frame.seq)]
        refused = run.sequencer.opened(frame.seq, digest, payload, frame.epoch, now)
        if refused is not None:
            overlap = replayed or (run.replayed is not None and run.replayed[0] <= frame.seq <= run.replayed[1])
            return [] if overlap and refused.reason == RejectReason.DUPLICATE else [refused]
        # Frames normally come before their checkpoint: until this one is vouched for, nothing new can be released.
        return run.sequencer.release(run.publisher.dn, now) if run.sequencer.vouched_for(frame.seq) else []

    def _on_checkpoint(self, frame: Checkpoint, now: float, replayed: bool) -> list[Event]:
        run = self.runs.open(frame, now, replayed)
        if run.publisher is None:
            run.sequencer.hold_early(frame, now)
            return []
        return self._apply_checkpoint(run, frame, now)

    def _apply_checkpoint(self, run: Run, frame: Checkpoint, now: float) -> list[Event]:
        if not checkpoint_valid(frame, run.publisher.certificate):
            return [Rejected(RejectReason.BAD_CHECKPOINT, "checkpoint signature does not verify with the "
                             "publisher's key", run.stream_id)]
        run.sequencer.vouch(frame)
        return run.sequencer.release(run.publisher.dn, now)

    def _on_run(self, frame: RunFrame) -> list[Event]:
        """Where a run comes from, once its publisher is known (the frame is re-sent with re-announcements)."""
        run = self.runs.get(frame.stream_id)
        if run is None or run.publisher is None or run.previous is not None:
            return []
        if not run_valid(frame, run.publisher.certificate):
            return [Rejected(RejectReason.BAD_RUN, "run frame signature does not verify with the publisher's key",
                             run.stream_id)]
        run.previous = (frame.previous_stream_id, frame.previous_last_seq)
        return [RunLinked(run.name, run.stream_id, frame.previous_stream_id, frame.previous_last_seq)]

    # -- announcements ----------------------------------------------------------------------

    def _on_announcement(self, frame: Announcement, now: float, replayed: bool = False) -> list[Event]:
        events, run = self.intake.epoch(frame, now, replayed)
        if run is None:
            return events
        # Frames that were waiting for this key, then checkpoints that were waiting for the publisher.
        for entry in run.sequencer.unlock(run.keyring.has_key):
            events += self._open(run, entry.frame, entry.digest, entry.arrived)
        for checkpoint in run.sequencer.take_early():
            events += self._apply_checkpoint(run, checkpoint, now)
        return events

    def _on_keys(self, frame: GroupAnnouncement | TreeAnnouncement, now: float, replayed: bool = False) -> list[Event]:
        """A group key or key tree announcement: only our group's or our path's is opened; then the epoch
        announcements that waited for it are retried."""
        group = isinstance(frame, GroupAnnouncement)
        if not (self._bits if group else self.intake.tree_bits).startswith(frame.tag):
            self.counters["other-group" if group else "other-tree-node"] += 1  # multicast carries all: not an error
            return []
        events, waiting = (self.intake.group if group else self.intake.tree)(frame, now, replayed)
        for announcement, arrived in waiting:
            events += self._on_announcement(announcement, arrived, replayed)
        return events
