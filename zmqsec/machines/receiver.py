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
from zmqsec.keys.trust import CrlPolicy, TrustStore
from zmqsec.protocol.announce import (
    AnnouncementRejected,
    Publisher,
    open_announcement,
    open_group_announcement,
    verify_announcement,
)
from zmqsec.protocol.checkpoint import checkpoint_valid
from zmqsec.protocol.datacipher import OpenFailed
from zmqsec.protocol.frames import Announcement, Checkpoint, DataFrame, FrameError, GroupAnnouncement, decode
from zmqsec.protocol.groups import kek_id, reader_bits
from zmqsec.protocol.primitives import frame_digest

from .events import Delivered, Event, Gap, GroupKeyAccepted, KeyAccepted, ReceiverPolicy, Rejected, Restarted
from .keyring import announcement_id
from .runs import Run, Runs

__all__ = ["StreamReceiver", "ReceiverPolicy", "Delivered", "Rejected", "Gap", "Restarted", "KeyAccepted",
           "GroupKeyAccepted", "Event"]


def count(counters: Counter, events: list[Event]) -> None:
    """Count events by name: ``delivered``, ``rejected:<reason>``, ``gap`` (sequence numbers), ``restart``."""
    for event in events:
        if isinstance(event, Delivered):
            counters["delivered"] += 1
        elif isinstance(event, Rejected):
            counters[f"rejected:{event.name}"] += 1
        elif isinstance(event, Gap):
            counters["gap"] += event.count
        elif isinstance(event, Restarted):
            counters["restart"] += 1


def verified(frame: Announcement | GroupAnnouncement, trust: TrustStore, allowed: DnAllowList | None,
             crl: CrlPolicy, at: dt.datetime) -> Publisher | Rejected:
    """The announcement's publisher, once its signature and certificate are checked (before any private-key
    operation, §4.4 step 2), or why not."""
    try:
        return verify_announcement(frame, trust, allowed_publishers=allowed, crl=crl, at=at)
    except AnnouncementRejected as exc:
        return Rejected(exc.reason, str(exc), frame.stream_id, scope=exc.scope)


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
        self.trust = trust
        self.allowed_publishers = allowed_publishers
        self.crl = crl
        self.policy = policy or ReceiverPolicy()
        self.wall_clock = wall_clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.runs = Runs(self.policy)
        self.counters: Counter = Counter()  # every event counted by name, in one place (_counted)
        self._bits = reader_bits(credential.certificate)  # which reader groups are ours

    # -- entry points ------------------------------------------------------------------

    def frame_received(self, parts: list[bytes], now: float) -> list[Event]:
        """One ZeroMQ message from the stream."""
        try:
            frame = decode(parts)
        except FrameError as exc:
            return self._counted([Rejected(exc.reason, str(exc))])
        if isinstance(frame, DataFrame):
            return self._counted(self._on_data(frame, parts[1], now))
        if isinstance(frame, Checkpoint):
            return self._counted(self._on_checkpoint(frame, now))
        self.counters["announcement-bytes"] += len(parts[0]) + len(parts[1])  # what key distribution costs a reader
        if isinstance(frame, GroupAnnouncement):
            return self._counted(self._on_group(frame, now))
        return self._counted(self._on_announcement(frame, now))

    def tick(self, now: float) -> list[Event]:
        """Expire frames that waited too long for a key or a checkpoint, and announcements that waited
        for our group's key."""
        events: list[Event] = []
        for run in list(self.runs.runs.values()):
            events += run.sequencer.expire(now)
            events += [Rejected(RejectReason.NOT_A_RECIPIENT, f"epoch {frame.epoch}: wrapped only for reader groups "
                                "whose keys we do not hold (not authorized, or revoked)", run.stream_id)
                       for frame in run.keyring.expire_waiting(now)]
            if run.publisher is not None:
                events += run.sequencer.release(run.publisher.dn)
        return self._counted(events)

    @property
    def held(self) -> int:
        """Frames held in all, waiting for a key or a checkpoint."""
        return self.runs.held

    def _counted(self, events: list[Event]) -> list[Event]:
        count(self.counters, events)
        return events

    # -- data and checkpoints -------------------------------------------------------------

    def _on_data(self, frame: DataFrame, body: bytes, now: float) -> list[Event]:
        run = self.runs.open(frame, now)
        if run is None:
            return [Rejected(RejectReason.RETIRED_STREAM, "frame of an earlier publisher run (replay)",
                             frame.stream_id, frame.seq)]
        sequencer = run.sequencer
        if sequencer.delivered_already(frame.seq):
            return [Rejected(RejectReason.REPLAYED_SEQUENCE, f"sequence {frame.seq} already delivered",
                             run.stream_id, frame.seq)]
        if self.runs.held >= self.policy.max_held:
            return [Rejected(RejectReason.OVERLOADED, "too many frames held waiting for keys or checkpoints",
                             run.stream_id, frame.seq)]
        digest = frame_digest(frame.topic, body)
        if not run.keyring.has_key(frame.epoch):
            sequencer.lock(frame, body, digest, now)
            return []
        return self._open(run, frame, digest, now)

    def _open(self, run: Run, frame: DataFrame, digest: bytes, now: float) -> list[Event]:
        try:
            payload = run.keyring.key(frame.epoch).open(frame.topic, frame.stream_id, frame.epoch, frame.seq,
                                                        frame.ciphertext)
        except OpenFailed:
            return [Rejected(RejectReason.DECRYPT_FAILED, f"epoch {frame.epoch}: AES-GCM authentication failed "
                             "(altered or forged)", run.stream_id, frame.seq)]
        refused = run.sequencer.opened(frame.seq, digest, payload, frame.epoch, now)
        if refused is not None:
            return [refused]
        # Frames normally come before their checkpoint: until this one is vouched for, nothing new can be released.
        return run.sequencer.release(run.publisher.dn) if run.sequencer.vouched_for(frame.seq) else []

    def _on_checkpoint(self, frame: Checkpoint, now: float) -> list[Event]:
        run = self.runs.open(frame, now)
        if run is None:
            return [Rejected(RejectReason.RETIRED_STREAM, "checkpoint of an earlier publisher run (replay)",
                             frame.stream_id)]
        if run.publisher is None:
            run.sequencer.hold_early(frame, now)
            return []
        return self._apply_checkpoint(run, frame)

    def _apply_checkpoint(self, run: Run, frame: Checkpoint) -> list[Event]:
        if not checkpoint_valid(frame, run.publisher.certificate):
            return [Rejected(RejectReason.BAD_CHECKPOINT, "checkpoint signature does not verify with the "
                             "publisher's key", run.stream_id)]
        run.sequencer.vouch(frame)
        return run.sequencer.release(run.publisher.dn)

    # -- announcements ----------------------------------------------------------------------

    def _verify(self, frame: Announcement | GroupAnnouncement) -> Publisher | Rejected:
        return verified(frame, self.trust, self.allowed_publishers, self.crl, self.wall_clock())

    def _on_announcement(self, frame: Announcement, now: float) -> list[Event]:
        if self.runs.retired(frame.stream_id):
            return [Rejected(RejectReason.RETIRED_STREAM, "announcement of an earlier publisher run (replay)",
                             frame.stream_id)]
        fingerprint = announcement_id(frame)
        known = self.runs.get(frame.stream_id)
        if known is not None:
            if known.keyring.settled(fingerprint, known.keyring.has_key(frame.epoch)):
                return []  # a periodic re-announcement of a key we hold (or were refused): costs nothing
            if known.keyring.older_than_every_key(frame.epoch):
                return [Rejected(RejectReason.STALE_EPOCH, f"epoch {frame.epoch} is older than every key held",
                                 frame.stream_id)]
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return [publisher]
        run = self.runs.open(frame, now)
        if self.runs.older_than_live(run, publisher):
            self.runs.forget(run.stream_id)
            return [Rejected(RejectReason.STALE_RESTART, "announcement of a publisher run older than the live one "
                             "(replay)", frame.stream_id)]
        if run.publisher is not None and run.publisher.certificate != publisher.certificate:
            return [Rejected(RejectReason.PUBLISHER_CHANGED, f"stream already bound to {run.publisher.dn}, not "
                             f"{publisher.dn}", run.stream_id)]
        try:
            epoch_key = open_announcement(frame, publisher, self.credential,
                                          run.keyring.group_keys_from(publisher.certificate))
        except AnnouncementRejected as exc:
            if exc.reason == RejectReason.NO_GROUP_KEY:
                # Our group's key may still be on its way (it has its own topic): hold, do not remember.
                run.keyring.wait_for_group_key(frame, fingerprint, now)
                return []
            run.keyring.remember(fingerprint, False)
            return [Rejected(exc.reason, str(exc), run.stream_id, scope=exc.scope)]
        run.keyring.remember(fingerprint, True)
        events: list[Event] = []
        restarted = self.runs.bind(run, publisher)
        if restarted is not None:
            events.append(restarted)
        if run.keyring.add_key(frame.epoch, epoch_key.key):
            events.append(KeyAccepted(run.stream_id, frame.epoch, publisher.dn))
        # Frames that were waiting for this key, then checkpoints that were waiting for the publisher.
        for entry in run.sequencer.unlock(run.keyring.has_key):
            events += self._open(run, entry.frame, entry.digest, entry.arrived)
        for checkpoint in run.sequencer.take_early():
            events += self._apply_checkpoint(run, checkpoint)
        return events

    def _on_group(self, frame: GroupAnnouncement, now: float) -> list[Event]:
        """A group key: only ours is opened; then epoch announcements that waited for it are retried."""
        if self.runs.retired(frame.stream_id):
            return [Rejected(RejectReason.RETIRED_STREAM, "group announcement of an earlier publisher run (replay)",
                             frame.stream_id)]
        if not self._bits.startswith(frame.tag):
            self.counters["other-group"] += 1  # multicast carries every group; not ours is not an error
            return []
        fingerprint = announcement_id(frame)
        known = self.runs.get(frame.stream_id)
        if known is not None:
            if known.keyring.settled(fingerprint, known.keyring.has_group_key(kek_id(frame.tag, frame.generation))):
                return []  # a re-announcement of a group key we hold (or were refused): costs nothing
            if known.keyring.older_than_every_group_key(frame.generation):
                return [Rejected(RejectReason.STALE_GROUP_KEY, f"group key generation {frame.generation} is older "
                                 "than every one held (replay)", frame.stream_id)]
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return [publisher]
        run = self.runs.open(frame, now)
        if run.publisher is not None and run.publisher.certificate != publisher.certificate:
            return [Rejected(RejectReason.PUBLISHER_CHANGED, f"stream already bound to {run.publisher.dn}, not "
                             f"{publisher.dn}", run.stream_id)]
        try:
            group = open_group_announcement(frame, self.credential)
        except AnnouncementRejected as exc:
            run.keyring.remember(fingerprint, False)
            return [Rejected(exc.reason, str(exc), run.stream_id, scope=exc.scope)]
        run.keyring.remember(fingerprint, True)
        run.keyring.add_group_key(group, publisher.certificate)
        events: list[Event] = [GroupKeyAccepted(run.stream_id, group.tag, group.generation)]
        for announcement, arrived in run.keyring.take_waiting():
            events += self._on_announcement(announcement, arrived)
        return events
