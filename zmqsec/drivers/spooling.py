"""Spool to stream and stream to spool: the loops of ``zmqsec publish`` and ``zmqsec subscribe``.

:class:`SpoolPublisher` publishes an outgoing spool, removing each item only
once the checkpoint that vouches for it is out; :class:`SpoolReader` stores
each verified message durably in an incoming spool (or writes it to stdout)
before it counts it.  Both write the status file and stop cleanly on a signal.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from zmqsec.errors import RejectReason
from zmqsec.machines.receiver import Delivered
from zmqsec.machines.sender import NoReaders

from .publisher import Publisher
from .spool import IncomingSpool, OutgoingSpool
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
                "checkpoints": s.checkpoints}

    def publish_batch(self, stop: Stop) -> int:
        """Publish what the spool holds now; returns how many items were published and removed."""
        items, sent = self.spool.take(), []
        try:
            for name, data in items:
                self.publisher.publish(data)
                sent.append(name)
                if stop.requested:
                    break
            # Removed only once the checkpoint vouching for them is out: a crash before this
            # point publishes them again after the restart rather than losing them.
            self.publisher.flush()
            for name in sent:
                self.spool.done(name)
        except NoReaders as exc:  # messages stay in the spool until a reader is authorized
            sent = []
            if self.status.due():
                log.warning("%s", exc)
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


def store(message: Delivered, spool: IncomingSpool | None) -> bool:
    """Store one message durably (fsync'ed) before anything counts it, or write it to stdout without a
    spool; False if the incoming queue refused it (not UTF-8 text)."""
    if spool is None:
        sys.stdout.buffer.write(message.payload + b"\n")
        sys.stdout.buffer.flush()
        return True
    if spool.accept(message.payload, message.publisher_dn, message.message_id) is None:
        log.warning("seq %d: payload is not UTF-8 text; %s", message.seq,
                    "in the reject queue" if spool.rejects is not None else "dropped (no reject queue configured)")
        return False
    return True


@dataclass
class SpoolReader:
    """Stores a stream's verified messages in an incoming spool (or writes them to stdout)."""

    subscriber: Subscriber
    spool: IncomingSpool | None
    status: StatusFile

    def status_fields(self) -> dict:
        """The reader's figures for its status file."""
        counters = self.subscriber.counters
        return {"epoch": self.subscriber.events.epoch, "received": counters.get("delivered", 0),
                "gaps": counters.get("gap", 0), "restarts": counters.get("restart", 0),
                "rejected": rejections(counters), "announcement_bytes": counters.get("announcement-bytes", 0)}

    def store(self, message: Delivered) -> bool:
        """Store one message (see :func:`store`), counting a refusal."""
        if not store(message, self.spool):
            self.subscriber.counters[f"rejected:{RejectReason.NOT_UTF8}"] += 1
            return False
        return True

    def run(self, stop: Stop, count: int = 0, exit_when_idle: float = 0.0) -> None:
        """Until stopped, or after ``count`` messages, or idle for ``exit_when_idle`` seconds (when given)."""
        received = 0
        last_message = time.monotonic()
        try:
            while not stop.requested:
                message = self.subscriber.receive(timeout=0.2)
                now = time.monotonic()
                if message is not None:
                    self.store(message)
                    received += 1
                    last_message = now
                    if count and received >= count:
                        break
                elif exit_when_idle and now - last_message >= exit_when_idle:
                    break
                if self.status.due():
                    fields = self.status.write(self.status_fields())
                    log.info("status: epoch %(epoch)d, %(received)d received, %(gaps)d lost, rejected %(rejected)s",
                             fields)
        finally:
            self.status.write(self.status_fields())
            self.subscriber.close()
