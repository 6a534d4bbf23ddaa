"""Spool to stream and stream to spool: the loops of ``zmqsec publish`` and ``zmqsec subscribe``.

:class:`SpoolPublisher` publishes an outgoing spool, removing each item only
once the checkpoint that vouches for it is out; :class:`SpoolReader` stores
each verified message durably in an incoming spool (or writes it to stdout)
before it counts it.  Both write the status file and stop cleanly on a signal.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sys
import time
from dataclasses import dataclass

from zmqsec.errors import RejectReason
from zmqsec.machines.receiver import Delivered
from zmqsec.machines.positions import Positions
from zmqsec.machines.sender import NoReaders

from .publisher import JournalBlocked, Publisher
from .mending import PositionFile
from .spool import IncomingSpool, OutgoingSpool, SpoolFull, disk_full
from .status import StatusFile, Stop, rejections
from .subscriber import Subscriber

log = logging.getLogger("zmqsec")


@dataclass
class SpoolPublisher:
    """Publishes what appears in an outgoing spool (or only services the stream without one)."""

    publisher: Publisher
    spool: OutgoingSpool | None
    status: StatusFile
    poll_interval: float = 0.2

    def status_fields(self) -> dict:
        """The publisher's figures for its status file."""
        p, s = self.publisher, self.publisher.stats
        return {"stream_id": p.sender.stream_id.hex(), "epoch": s.epoch, "readers": s.readers, "sent": s.sent,
                "bytes": s.bytes, "rekeys": s.rekeys, "last_rekey_cause": s.last_rekey_cause,
                "last_rekey_seconds": round(p.last_rekey_seconds, 4), "announcement_bytes": s.announcement_bytes,
                "last_rekey_bytes": s.last_rekey_bytes, "groups": s.groups, "group_rekeys": s.group_rekeys,
                "tree_messages": s.tree_messages, "checkpoints": s.checkpoints, "journal_blocked": p.recorder.blocked,
                "rejected": p.gate.rejected(),
                "replay": dict(p.replay.stats) if p.replay is not None else None}

    def publish_batch(self, stop: Stop) -> int:
        """Publish what the spool holds now; returns how many items were published and removed.

        An item leaves the spool only once the journal holding it and its checkpoint is synced (with a
        journal), or once its checkpoint is out (without one).  An item a killed run had journaled already
        is removed without being published again.
        """
        if self.publisher.recorder.blocked:
            return 0  # the journal cannot be written: everything stays in the spool
        items, sent = self.spool.take(), []
        try:
            for name, data in items:
                digest = hashlib.sha256(data).digest()
                if self.publisher.published(name, digest):
                    self.spool.done(name)
                    sent.append(name)
                    continue
                self.publisher.publish(data, (name, digest))
                sent.append(name)
                if stop.requested:
                    break
            # Removed only once the checkpoint vouching for them is out (and journaled): a crash before
            # this point publishes them again after the restart rather than losing them.
            if not self.publisher.flush():
                sent = []
            for name in sent:
                self.spool.done(name)
        except NoReaders as exc:  # messages stay in the spool until a reader is authorized
            sent = []
            if self.status.due():
                log.warning("%s", exc)
        except JournalBlocked:
            sent = []
        finally:
            for name, _ in items:
                if name not in sent:
                    self.spool.release(name)
        return len(sent)

    def run(self, stop: Stop, exit_when_idle: float = 0.0) -> None:
        """Until stopped (or idle for ``exit_when_idle`` seconds, when given)."""
        idle_since = time.monotonic()
        try:
            while not stop.requested:
                published = self.publish_batch(stop) if self.spool is not None else 0
                if published:
                    idle_since = time.monotonic()
                elif exit_when_idle and time.monotonic() - idle_since >= exit_when_idle:
                    break
                if self.status.due():
                    fields = self.status.write(self.status_fields())
                    log.info("status: epoch %(epoch)d, %(readers)d readers, %(sent)d sent, %(rekeys)d rekeys", fields)
                self.publisher.run_idle(0 if published else self.poll_interval)
        finally:
            self.publisher.close()
            self.status.write(self.status_fields())


def store(message: Delivered, spool: IncomingSpool | None, *, durable: bool = True) -> bool:
    """Store one message (synced unless ``durable`` is False: then the caller syncs the batch), or write it to
    stdout without a spool; False if the incoming queue refused it (not UTF-8 text)."""
    if spool is None:
        sys.stdout.buffer.write(message.payload + b"\n")
        sys.stdout.buffer.flush()
        return True
    if spool.accept(message.payload, message.publisher_dn, message.message_id, durable=durable) is None:
        log.warning("seq %d: payload is not UTF-8 text; %s", message.seq,
                    "in the reject queue" if spool.rejects is not None else "dropped (no reject queue configured)")
        return False
    return True


BATCH = 1000  # records stored and synced together at most


def recover(positions: Positions, spool: IncomingSpool, stream: str) -> None:
    """Records stored after the last saved position (a crash between the two) count as stored: they are
    recognised by their ``empaid`` among the newest records of the spool."""
    positions.adopt(stream.encode(), spool.recent_ids(BATCH * 2))


FULL_RETRY = 2.0  # seconds between attempts to store into a full spool


@dataclass
class SpoolReader:
    """Stores a stream's verified messages in an incoming spool (or writes them to stdout), in batches: the
    records, one sync, then the reader's position (docs/PROTOCOL.md §10.5)."""

    subscriber: Subscriber
    spool: IncomingSpool | None
    status: StatusFile
    position_file: PositionFile | None = None

    def __post_init__(self) -> None:
        self._unstored: collections.deque[Delivered] = collections.deque()  # delivered, not yet in the spool
        self._full_until = 0.0
        self._position_unsaved = False
        self.stored = 0

    def status_fields(self) -> dict:
        """The reader's figures for its status file."""
        counters, mender = self.subscriber.counters, self.subscriber.mender
        current = self.subscriber.positions.current.get(self.subscriber.stream.encode())
        runs = self.subscriber.positions.streams.get(self.subscriber.stream.encode(), {})
        return {"epoch": self.subscriber.events.epoch, "received": counters.get("delivered", 0),
                "stored": self.stored, "gaps": counters.get("gap", 0), "restarts": counters.get("restart", 0),
                "rejected": rejections(counters), "announcement_bytes": counters.get("announcement-bytes", 0),
                "position": {"run": current.hex(), "seq": runs[current].seq} if current in runs else None,
                "lag": len(self._unstored) + self.subscriber.receiver.held,
                "held_bytes": self.subscriber.receiver.held_bytes,
                "repairs": mender.counters.get("repairs", 0), "repaired": mender.counters.get("replayed-frames", 0),
                "roots": mender.counters.get("roots-received", 0),
                "unrecoverable": mender.counters.get("unrecoverable", 0), "spool_full": self._full_until > 0,
                "endpoints": self.subscriber.links.status()}

    def _store_batch(self) -> int:
        """Store what is waiting, sync once, advance the position; a full spool keeps the rest for later."""
        done: list[Delivered] = []
        try:
            while self._unstored:
                message = self._unstored[0]
                if not store(message, self.spool, durable=False):
                    self.subscriber.counters[f"rejected:{RejectReason.NOT_UTF8}"] += 1
                done.append(self._unstored.popleft())
            self._full_until = 0.0
        except SpoolFull as exc:
            if not self._full_until:
                log.error("%s; %d record(s) wait, storing resumes when space returns", exc, len(self._unstored))
            self._full_until = time.monotonic() + FULL_RETRY
        if done:
            if self.spool is not None:
                self.spool.sync()
            for message in done:
                self.subscriber.stored(message)
            self.stored += len(done)
        if (done or self._position_unsaved) and self.position_file is not None:
            try:
                self.position_file.save(self.subscriber.positions)
                self._position_unsaved = False
            except OSError as exc:
                # The records are stored (and synced); after a crash they are recognised by their ids in
                # the spool, so an unsaved position loses nothing.  Saved again with the next batch.
                if not disk_full(exc):
                    raise
                self._position_unsaved = True
                self._full_until = self._full_until or time.monotonic() + FULL_RETRY
        return len(done)

    def run(self, stop: Stop, count: int = 0, exit_when_idle: float = 0.0) -> None:
        """Until stopped, or after ``count`` messages, or idle for ``exit_when_idle`` seconds (when given)."""
        last_message = time.monotonic()
        try:
            while not stop.requested:
                now = time.monotonic()
                if self._unstored and now < self._full_until:
                    time.sleep(0.05)  # the spool is full: read nothing more (the socket pushes back), retry soon
                else:
                    if not self._unstored:
                        message = self.subscriber.receive(timeout=0.2)
                        while message is not None:
                            self._unstored.append(message)
                            if len(self._unstored) >= BATCH or not self.subscriber.events.ready:
                                break
                            message = self.subscriber.receive(timeout=0)
                    if self._unstored and self._store_batch():
                        last_message = time.monotonic()
                        if count and self.stored >= count:
                            break
                    elif exit_when_idle and now - last_message >= exit_when_idle:
                        break
                if self.status.due():
                    fields = self.status.write(self.status_fields())
                    log.info("status: epoch %(epoch)d, %(stored)d stored, %(gaps)d lost, rejected %(rejected)s", fields)
        finally:
            self.status.write(self.status_fields())
            self.subscriber.close()
