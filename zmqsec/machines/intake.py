"""Key announcements into a run's keyring (docs/PROTOCOL.md §4.4-§4.6): verified first, opened only then.

Epoch announcements, group key and key tree announcements arrive on their own topics;
each is checked once (a re-announcement of something already judged costs
nothing), its signature and publisher certificate before any private-key
operation, and its key confirmed before it is kept.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable

from zmqsec.crypto import cms, enveloped
from zmqsec.errors import RejectReason, Scope
from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.trust import CrlPolicy, TrustStore
from zmqsec.protocol.announce import (
    AnnouncementRejected,
    Publisher,
    open_announcement,
    open_group_announcement,
    open_tree_announcement,
    signed_header,
    verify_announcement,
)
from zmqsec.protocol.frames import Announcement, GroupAnnouncement, TreeAnnouncement, stream_name
from zmqsec.protocol.groups import kek_id

from .events import Event, GroupKeyAccepted, KeyAccepted, Rejected, TreeKeysAccepted
from .keyring import announcement_id
from .runs import Run, Runs


SIGNED_KEPT = 4096  # headers of opened announcements remembered, by their signature


class KeyIntake:
    """Judges announcements for every run of a reader."""

    def __init__(self, credential, trust: TrustStore, runs: Runs, *, allowed_publishers: DnAllowList | None,
                 crl: CrlPolicy, wall_clock: Callable[[], dt.datetime], tree_bits: bytes = b"") -> None:
        self.credential, self.trust, self.runs = credential, trust, runs
        self.tree_bits = tree_bits  # our key tree leaf: the nodes whose tags prefix it are our path (§4.6)
        self.allowed_publishers, self.crl, self.wall_clock = allowed_publishers, crl, wall_clock
        # The header each opened announcement's key record holds, by its signature (which binds the envelope):
        # a recorded genuine announcement re-sent under another header is refused with no cryptography at all,
        # one dictionary lookup (docs/PROTOCOL.md §9).  A genuine signature beside another envelope under the
        # genuine header goes on to verification, and fails there.
        self._signed: OrderedDict[bytes, tuple] = OrderedDict()

    def _reheaded(self, frame: Announcement | GroupAnnouncement) -> Rejected | None:
        """Is this a genuine announcement we opened, re-sent under another header (a replay)?"""
        signed = self._signed.get(frame.signature)
        if signed is None or signed == signed_header(frame):
            return None
        return Rejected(RejectReason.HEADER_MISMATCH, "a signed announcement re-sent under another header (replay)",
                        frame.stream_id)

    def _learn(self, frame: Announcement | GroupAnnouncement, signed: tuple | None) -> None:
        """Remember the header the announcement's key record holds (once it was opened)."""
        if signed is None:
            return
        self._signed[frame.signature] = signed
        self._signed.move_to_end(frame.signature)
        while len(self._signed) > SIGNED_KEPT:
            self._signed.popitem(last=False)

    def _verify(self, frame: Announcement | GroupAnnouncement) -> Publisher | Rejected:
        """The announcement's publisher, once its signature and certificate are checked (before any private-key
        operation, §4.4 step 2), or why not."""
        try:
            return verify_announcement(frame, self.trust, allowed_publishers=self.allowed_publishers, crl=self.crl,
                                       at=self.wall_clock())
        except AnnouncementRejected as exc:
            return Rejected(exc.reason, str(exc), frame.stream_id, scope=exc.scope)

    def epoch(self, frame: Announcement, now: float, replayed: bool = False) -> tuple[list[Event], Run | None]:
        """An epoch announcement: the events, and the run when a new key may unlock held frames."""
        if (replay := self._reheaded(frame)) is not None:
            return [replay], None
        fingerprint = announcement_id(frame)
        known = self.runs.get(frame.stream_id)
        if known is not None:
            if known.keyring.settled(fingerprint, known.keyring.has_key(frame.epoch)):
                if not (known.repair and not replayed and known.publisher is not None):
                    return [], None  # a periodic re-announcement of a key we hold (or were refused): costs nothing
                return self._seen_live(known)
            if known.keyring.older_than_every_key(frame.epoch):
                return [Rejected(RejectReason.STALE_EPOCH, f"epoch {frame.epoch} is older than every key held",
                                 frame.stream_id)], None
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return [publisher], None
        run = self.runs.open(frame, now, replayed)
        if self.runs.older_than_live(run, publisher, replayed):
            self.runs.forget(run.stream_id)
            return [Rejected(RejectReason.STALE_RESTART, "announcement of a publisher run older than the live one "
                             "(replay)", frame.stream_id)], None
        if run.publisher is not None and run.publisher.certificate != publisher.certificate:
            return [Rejected(RejectReason.PUBLISHER_CHANGED, f"stream already bound to {run.publisher.dn}, not "
                             f"{publisher.dn}", run.stream_id)], None
        try:
            epoch_key = open_announcement(frame, publisher, self.credential,
                                          run.keyring.group_keys_from(publisher.certificate))
        except AnnouncementRejected as exc:
            if exc.reason == RejectReason.NO_GROUP_KEY:
                # Our group's key may still be on its way (it has its own topic): hold, do not remember.  In key
                # tree mode, if it does not come soon, we ask for our path (§4.6).
                run.keyring.wait_for_group_key(frame, fingerprint, now)
                run.keyring.tree_wanted = run.keyring.tree_wanted or now
                return [], None
            run.keyring.remember(fingerprint, False)
            self._learn(frame, exc.signed_header)
            return [Rejected(exc.reason, str(exc), run.stream_id, scope=exc.scope)], None
        run.keyring.remember(fingerprint, True)
        self._learn(frame, signed_header(frame))
        events: list[Event] = []
        restarted = self.runs.bind(run, publisher, replayed)
        if restarted is not None:
            events.append(restarted)
        if run.keyring.add_key(frame.epoch, epoch_key.key):
            events.append(KeyAccepted(run.stream_id, frame.epoch, publisher.dn))
        return events, run

    def _seen_live(self, run: Run) -> tuple[list[Event], Run | None]:
        """A run known from replay only, now announced live (the same announcement, already judged): it may
        become the live run, as if this were its first announcement."""
        if self.runs.older_than_live(run, run.publisher):
            self.runs.forget(run.stream_id)
            return [Rejected(RejectReason.STALE_RESTART, "announcement of a publisher run older than the live one "
                             "(replay)", run.stream_id)], None
        restarted = self.runs.bind(run, run.publisher)
        return ([restarted] if restarted else []), run

    def _judged(self, frame: GroupAnnouncement | TreeAnnouncement, fingerprint: bytes, now: float, replayed: bool,
                opener: Callable) -> tuple[Run, Publisher, object] | Rejected:
        """Verify a group key or key tree announcement (signature and publisher before any private-key operation),
        bind it to its run, open it with ``opener(run, publisher)`` and remember the verdict: (run, publisher, what
        it opened), or the refusal."""
        publisher = self._verify(frame)
        if isinstance(publisher, Rejected):
            return publisher
        run = self.runs.open(frame, now, replayed)
        if run.publisher is not None and run.publisher.certificate != publisher.certificate:
            return Rejected(RejectReason.PUBLISHER_CHANGED, f"stream already bound to {run.publisher.dn}, not "
                            f"{publisher.dn}", run.stream_id)
        try:
            opened = opener(run, publisher)
        except AnnouncementRejected as exc:
            run.keyring.remember(fingerprint, False)
            self._learn(frame, exc.signed_header)
            return Rejected(exc.reason, str(exc), run.stream_id, scope=exc.scope)
        run.keyring.remember(fingerprint, True)
        self._learn(frame, signed_header(frame))
        return run, publisher, opened

    def group(self, frame: GroupAnnouncement, now: float,
              replayed: bool = False) -> tuple[list[Event], list[tuple[Announcement, float]]]:
        """A group key announcement of our group: the events, and the epoch announcements to retry now."""
        if (replay := self._reheaded(frame)) is not None:
            return [replay], []
        fingerprint = announcement_id(frame)
        known = self.runs.get(frame.stream_id)
        if known is not None:
            if known.keyring.settled(fingerprint, known.keyring.has_group_key(kek_id(frame.tag, frame.generation))):
                return [], []  # a re-announcement of a group key we hold (or were refused): costs nothing
            if known.keyring.older_than_every_group_key(frame.generation):
                return [Rejected(RejectReason.STALE_GROUP_KEY, f"group key generation {frame.generation} is older "
                                 "than every one held (replay)", frame.stream_id)], []
        judged = self._judged(frame, fingerprint, now, replayed, lambda run, publisher: open_group_announcement(
            frame, self.credential))
        if isinstance(judged, Rejected):
            return [judged], []
        run, publisher, group = judged
        run.keyring.add_group_key(group, publisher.certificate)
        return [GroupKeyAccepted(run.stream_id, group.tag, group.generation)], run.keyring.take_waiting()

    def tree(self, frame: TreeAnnouncement, now: float,
             replayed: bool = False) -> tuple[list[Event], list[tuple[Announcement, float]]]:
        """A key tree announcement for a node of our path: the events, and the epoch announcements
        to retry now.  An update wrapped under keys we do not hold costs no cryptography: we missed an earlier
        update, and ask for our path (§4.6)."""
        if (replay := self._reheaded(frame)) is not None:
            return [replay], []
        fingerprint = announcement_id(frame)
        known = self.runs.get(frame.stream_id)
        if known is not None and known.keyring.settled(fingerprint, True):
            return [], []  # judged before: a copy from another path costs nothing
        try:
            wrapped = enveloped.recipients(frame.envelope)
        except cms.CmsError as exc:
            return [Rejected(exc.reason, f"tree announcement: {exc}", frame.stream_id, scope=Scope.ENVELOPE)], []
        held = known.keyring.tree_key_ids() if known is not None else set()
        if not wrapped.key_transport and held.isdisjoint(wrapped.kek_ids):
            if known is not None:
                known.keyring.tree_wanted = known.keyring.tree_wanted or now
            return [Rejected(RejectReason.NO_TREE_KEY, f"tree node {frame.tag.decode()!r} generation "
                             f"{frame.generation}: wrapped under keys we do not hold (an update missed, or revoked)",
                             frame.stream_id)], []
        judged = self._judged(frame, fingerprint, now, replayed, lambda run, publisher: open_tree_announcement(
            frame, self.credential, run.keyring.group_keys_from(publisher.certificate)))
        if isinstance(judged, Rejected):
            return [judged], []
        run, publisher, got = judged
        new = run.keyring.add_tree_keys(got, self.tree_bits, stream_name(frame.topic), run.stream_id,
                                        publisher.certificate)
        run.keyring.tree_wanted = None
        return [TreeKeysAccepted(run.stream_id, got.generation, new)], run.keyring.take_waiting()
