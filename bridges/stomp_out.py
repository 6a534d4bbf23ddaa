"""Stream -> broker: every verified stream message becomes one EMI S/MIME message on ActiveMQ.

The bridge is an authorized reader of the stream.  For each delivered message
it signs (and, given a server certificate, encrypts) the body with the one
S/MIME module, writes it to the durable outbox, and only then counts it as
taken.  A sender pass sends a window of outbox messages as one STOMP
transaction whose COMMIT asks for a ``receipt``, and removes them when that
RECEIPT arrives.  With the broker down
the outbox grows while the stream is still read; on reconnection everything is
sent.  A message keeps its ``empa-id`` (stream id and sequence number) on every
retry, so a duplicate after a crash is recognisable as one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

from cryptography import x509

from zmqsec.errors import RejectReason
from zmqsec.keys.pemfiles import Credential
from zmqsec import Delivered

from .outbox import LocalRejects, Outbox
from .signer import BodyMaker
from .stomplink import BrokerUnavailable, StompLink

log = logging.getLogger("zmqsec.bridge.out")

TAKE_FOR = 0.2  # seconds of taking from the stream before the sender and status get a turn (catch-up)


@dataclass(frozen=True)
class OutSettings:
    """Where and how stream messages go to the broker."""

    destination: str
    digest: str = "sha256"
    server_certs: tuple[x509.Certificate, ...] = ()  # encrypt to these (the central server); empty: sign only
    cipher: str = "aes256"
    window: int = 100
    receipt_timeout: float = 10.0
    workers: int = 1  # processes that sign (and encrypt); 1: in the bridge's own


class StompOutBridge:
    """Stream messages to EMI S/MIME on the broker, through the durable outbox."""

    def __init__(self, link: StompLink, outbox: Outbox, credential: Credential, settings: OutSettings,
                 rejects: LocalRejects | None = None, maker: BodyMaker | None = None) -> None:
        self.link, self.outbox, self.credential, self.settings = link, outbox, credential, settings
        # Payloads no SSM receiver can store (not UTF-8: it decodes every body, and a failure stops its
        # message thread) are kept here, never sent; beside the outbox unless told otherwise (made when needed).
        self.rejects = rejects
        self.counters: Counter = Counter()
        self.maker = maker or BodyMaker(credential, digest=settings.digest, server_certs=settings.server_certs,
                                        cipher=settings.cipher, workers=settings.workers)

    def body_for(self, content: bytes) -> bytes:
        """Sign first, then (optionally) encrypt, as the EMI protocol orders it (in this process)."""
        return self.maker.body(content)

    def step(self, messages: list[Delivered], now: float) -> None:
        """Take a batch into the outbox, committed with one fsync: its bodies are made on the worker processes
        while the outbox's earlier messages go to the broker (a window of them, :meth:`send_pending`)."""
        sendable = [m for m in messages if self._sendable(m)]
        bodies = self.maker.submit([m.payload for m in sendable])
        self.send_pending(now)
        for message, body in zip(sendable, bodies()):
            self.outbox.add(body, message.message_id, durable=False)
        self.outbox.sync()
        self.counters["queued"] += len(sendable)

    def _sendable(self, message: Delivered) -> bool:
        """Can an SSM receiver store this payload?  If not, it is kept (durably) in the local reject queue."""
        try:
            message.payload.decode("utf-8")
        except UnicodeDecodeError:
            if self.rejects is None:
                self.rejects = LocalRejects(self.outbox.path.with_name(self.outbox.path.name + ".reject"))
            self.rejects.add(message.payload, message.message_id, f"{RejectReason.NOT_UTF8}: the payload is not UTF-8 "
                             "text, which an SSM receiver cannot store (kept here, not sent)")
            self.counters[f"rejected:{RejectReason.NOT_UTF8}"] += 1
            log.warning("message %s: not UTF-8 text; kept in %s, not sent", message.message_id, self.rejects.path)
            return False
        return True

    def send_pending(self, now: float) -> int:
        """One window of the outbox to the broker; returns how many the broker receipted."""
        if not self.link.connected:
            if not self.link.backoff.due(now):
                return 0
            if not self.link.ensure_connected(now):
                self.counters["connect-failed"] += 1
                log.warning("%d message(s) wait in the outbox", self.outbox.count())
                return 0
        names = self.outbox.pending(self.settings.window)
        if not names:
            return 0
        # One transaction per window: the broker commits (and syncs) the window once, where a receipt per
        # message costs it a sync each.  The COMMIT's receipt covers every message of the window.
        receipt = f"{names[0]}+{len(names)}"
        try:
            items = []
            for name in names:
                body, empaid = self.outbox.get(name)
                items.append((body, {"empa-id": empaid, "persistent": "true", "content-type": "text/plain"}))
            self.link.send_transaction(self.settings.destination, items, receipt)
            got = self.link.wait_receipts({receipt}, self.settings.receipt_timeout)
        except BrokerUnavailable as exc:
            log.warning("broker lost mid-send (%s); unreceipted messages stay in the outbox", exc)
            self.link.failed(now)
            return 0
        if not got:
            log.warning("%d message(s) had no receipt within %.0fs; they will be sent again",
                        len(names), self.settings.receipt_timeout)
            self.link.close()  # the broker aborts the transaction if it had not committed it
            return 0
        self.outbox.remove(*names)
        self.counters["sent"] += len(names)
        return len(names)

    def status_fields(self, subscriber) -> dict:
        """The bridge's figures for its status file."""
        mender = subscriber.mender
        return {"epoch": subscriber.events.epoch, "outbox": self.outbox.count(), "gaps": subscriber.counters.get("gap", 0),
                "repairs": mender.counters.get("repairs", 0), "repaired": mender.counters.get("replayed-frames", 0),
                "unrecoverable": mender.counters.get("unrecoverable", 0),
                "broker": "%s:%d" % self.link.current if self.link.connected else None,
                **{k: v for k, v in self.counters.items() if not k.startswith("rejected:")},
                "rejected": {k.split(":", 1)[1]: v for k, v in self.counters.items() if k.startswith("rejected:")},
                "stream_rejected": sum(v for k, v in subscriber.counters.items() if k.startswith("rejected:"))}

    def run(self, subscriber, stop, status, position_file=None) -> None:
        """Read the stream into the outbox and the outbox into the broker until ``stop.requested``;
        ``status`` is a status file (``zmqsec.drivers.status.StatusFile``).  With ``position_file`` the bridge is a
        reader with a position (docs/PROTOCOL.md §10.5): what was taken is saved before anything is sent, and
        a restarted bridge resumes from there, taking nothing twice."""
        try:
            while not stop.requested:
                message = subscriber.receive(timeout=0.05)
                taken, until = [], time.monotonic() + TAKE_FOR
                while message is not None and not stop.requested:
                    taken.append(message)
                    # A catch-up refills the queue as fast as it drains: send and report between batches.
                    more = subscriber.events.ready and time.monotonic() < until
                    message = subscriber.receive(timeout=0.001) if more else None
                if taken:
                    self.step(taken, time.monotonic())  # in the outbox, synced once, before it counts as taken
                    for message in taken:
                        subscriber.stored(message)
                    if position_file is not None:
                        position_file.save(subscriber.positions)  # before sending: a crash resumes after these
                self.send_pending(time.monotonic())
                if status.due():
                    status.write(self.status_fields(subscriber))
        finally:
            status.write(self.status_fields(subscriber))
            subscriber.close()
            self.link.close()
            self.outbox.close()
            self.maker.close()
