"""Broker -> spool/stream: EMI S/MIME messages from ActiveMQ, verified, stored, then acknowledged.

For each message (client-individual acknowledgement): decrypt if it is
enveloped for our certificate and verify the signature (on the worker
processes of :mod:`.opener`, one batch while the bridge stores the one before),
validate the signer's certificate with the trust layer (chain, CRLs, DN
allow-list), write it to an SSM-schema incoming dirq queue and/or into a zmqsec
stream, and once a batch of them is durable (one sync for the batch), ACK them.
A refused message goes to the reject queue with its reason and is acknowledged
too, so the broker does not redeliver it forever.

A message is stored once: a sender that crashed between the broker's receipt
and its own bookkeeping (``stomp-out`` after a kill -9) sends it again under
the same ``empa-id``, and the copy is acknowledged without being stored again.
The ids remembered are the last ``RECENT_IDS`` accepted (at start, those still
in the incoming spool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import datetime as dt
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from zmqsec.keys.dn import DnAllowList, slash_dn
from zmqsec.keys.errors import CertificateRejected
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import CrlPolicy, TrustStore
from zmqsec.bridges import smime

from zmqsec.errors import RejectReason, ZmqsecError

from .opener import Opener, Unopened, open_one
from .stomplink import BrokerUnavailable, Frame, StompLink

if TYPE_CHECKING:
    from zmqsec import IncomingSpool

log = logging.getLogger("zmqsec.bridge.in")

ACCEPTED_SIGNERS = 4096  # signer certificates whose acceptance is remembered (see StompInBridge._validate)
RECENT_IDS = 100_000  # (signer, empa-id) pairs remembered to store a re-sent message once
BATCH = 200  # messages stored together before one sync and their acknowledgements
BATCH_WAIT = 0.05  # seconds a batch may wait to fill
NO_ID = "noid"  # what SSM sends without an empa-id: never taken for a duplicate


def _utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Refused(ZmqsecError):
    """A refused message: the reason, and the signer's DN once it is known (None when the message could not be
    opened)."""

    def __init__(self, reason: RejectReason, message: str, signer: str | None) -> None:
        super().__init__(message)
        self.reason, self.signer = reason, signer


@dataclass(frozen=True)
class InSettings:
    """What the inbound bridge accepts, and from where."""

    destination: str
    max_bytes: int = 16 * 1024 * 1024
    crl: CrlPolicy = CrlPolicy.REQUIRE
    allowed_dns: DnAllowList | None = None
    workers: int = 1  # processes that open (decrypt and verify); 1: in the bridge's own


class StompInBridge:
    """EMI S/MIME messages from the broker: verified, stored durably, then acknowledged."""

    def __init__(self, link: StompLink, credential: Credential, trust: TrustStore, settings: InSettings,
                 incoming: "IncomingSpool | None" = None, publisher=None, signers=None,
                 opener: Opener | None = None) -> None:
        if incoming is None and publisher is None:
            raise ValueError("stomp-in needs an incoming spool, a stream publisher, or both")
        self.link, self.credential, self.trust, self.settings = link, credential, trust, settings
        self.incoming, self.publisher = incoming, publisher
        # A watch on the trust directory and the DN list (zmqsec.drivers.watch.SignerWatch: ``poll(now)``,
        # ``trust``, ``allowed``): revocations and DN removals take effect while the bridge runs.
        self.signers = signers
        self.opener = opener or Opener(credential, max_bytes=settings.max_bytes, workers=settings.workers)
        self.counters: Counter = Counter()
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._accepted: dict[bytes, dt.datetime] = {}  # signer certificates accepted, until when (see _validate)
        self._opening: tuple[list[Frame], Callable] | None = None  # a batch taken, being opened (see serve_once)
        for pair in incoming.recent_signed_ids(RECENT_IDS) if incoming is not None else ():
            self._recent[pair] = None
        link.subscribe(settings.destination, ack="client-individual")

    def verdict(self, body: bytes) -> tuple[bytes, str]:
        """(content, signer DN) of an acceptable message, opened in this process, or :class:`Refused`."""
        return self._decide(open_one(body, self.credential, self.settings.max_bytes))

    def _decide(self, outcome: smime.Opened | Unopened) -> tuple[bytes, str]:
        """(content, signer DN) of an opened message whose signer is acceptable, or :class:`Refused` (naming the
        signer once it is known)."""
        if isinstance(outcome, Unopened):
            raise Refused(outcome.reason, outcome.detail, None)
        signer = slash_dn(outcome.signer.subject)
        self._validate(outcome, signer)
        return outcome.content, signer

    def _validate(self, opened: smime.Opened, signer: str) -> None:
        """The trust layer's verdict on the signer (chain, CRL, DN list), or :class:`Refused`.  An acceptance is
        remembered for the same certificates until the trust directory or the DN list changes (the watch
        replaces them, which empties the memory) or time alone could change it (a certificate's expiry, a CRL's
        nextUpdate): a busy sender is validated once, not once per message.  Refusals are not remembered."""
        now = dt.datetime.now(dt.timezone.utc)
        key = b"".join(c.fingerprint(hashes.SHA256()) for c in (opened.signer, *opened.certificates))
        if now < self._accepted.get(key, now):
            return
        try:
            chain = self.trust.validate(opened.signer, untrusted=opened.certificates, crl=self.settings.crl,
                                        allowed_dns=self.settings.allowed_dns, at=now)
        except CertificateRejected as exc:
            raise Refused(exc.reason, str(exc), signer) from None
        if len(self._accepted) >= ACCEPTED_SIGNERS:
            self._accepted.clear()
        self._accepted[key] = min((self.trust.valid_until, *(c.not_valid_after_utc for c in chain.certificates)))

    def handle(self, frames: list[Frame], opening: Callable[[], list[smime.Opened | Unopened]] | None = None) -> int:
        """Store (or reject) a batch of messages, sync once, then acknowledge them all; returns how many were
        accepted.  ``opening`` waits for the batch's opened messages (:meth:`Opener.open`, started earlier); without
        it they are opened now.  Nothing is acknowledged before it is durable: a crash before the sync loses no
        message, the broker redelivers the batch (and a redelivered copy of a stored one is recognised by its
        empa-id)."""
        accepted: list[tuple[str, str]] = []  # (signer, empa-id) stored in this batch
        handled = 0
        outcomes = (opening or self.opener.open([frame.body for frame in frames]))()
        try:
            for frame, outcome in zip(frames, outcomes):
                stored = self._judge(frame, outcome, accepted)
                if stored is not None:
                    accepted.append(stored)
                handled += 1
        finally:
            # Also when storing failed part-way (a full disk): what was stored before is synced and acknowledged,
            # so that the broker's redelivery of the rest does not store it twice.
            if accepted and self.incoming is not None:
                self.incoming.sync()  # group commit: one sync for the batch, then the acknowledgements
            for signer, empaid in accepted:  # stored for good: a redelivered copy is a duplicate from now on
                if empaid != NO_ID:
                    self._recent[(signer, empaid)] = None
                    if len(self._recent) > RECENT_IDS:
                        self._recent.popitem(last=False)
            for frame in frames[:handled]:
                self.link.ack(frame)
        self.counters["accepted"] += len(accepted)
        for signer, count in Counter(signer for signer, _ in accepted).items():
            log.info("%d message(s) from %s accepted", count, signer)
        for signer, empaid in accepted:
            log.debug("message %s from %s accepted", empaid, signer)
        return len(accepted)

    def _judge(self, frame: Frame, outcome: smime.Opened | Unopened,
               batch: list[tuple[str, str]]) -> tuple[str, str] | None:
        """Decide on one opened message and store it (not yet synced), or reject it durably; (signer, empa-id) if
        stored."""
        empaid = frame.headers.get("empa-id", NO_ID)
        signer = None
        try:
            content, signer = self._decide(outcome)
        except Refused as exc:
            reason, detail, signer = exc.reason, str(exc), exc.signer
        except Exception as exc:  # a bug of ours must not stop the bridge nor lose the message
            log.exception("message %s: unexpected error while validating", empaid)
            reason, detail = RejectReason.INTERNAL_ERROR, exc.__class__.__name__
        else:
            reason = None
        if reason is None and empaid != NO_ID and ((signer, empaid) in self._recent or (signer, empaid) in batch):
            self.counters["duplicates"] += 1
            log.info("message %s from %s: a copy of one stored already; acknowledged, not stored again", empaid, signer)
            return None
        if reason is None and self.incoming is not None and not _utf8(content):
            reason, detail = RejectReason.NOT_UTF8, "the signed content is not UTF-8 text, which the queue stores"
        if reason is not None:
            self._reject(frame.body, reason, detail, signer, empaid)
            self.counters[f"rejected:{reason}"] += 1
            log.warning("message %s%s rejected [%s]: %s", empaid, f" from {signer}" if signer else "", reason, detail)
            return None
        # Storing may fail (disk full, no reader for the stream): then nothing of the batch is acknowledged,
        # and the broker redelivers it.
        if self.incoming is not None:
            self.incoming.accept(content, signer, empaid, durable=False)
        if self.publisher is not None:
            self.publisher.publish(content)
        return signer, empaid

    def _reject(self, body: bytes, reason: RejectReason, detail: str, signer: str | None, empaid: str) -> None:
        """Into the reject queue, durably: the reason, the signer when known, and the original bytes (the first
        ``max_bytes`` of an oversized message, noted as truncated)."""
        if self.incoming is None:
            return
        kept = body[:self.settings.max_bytes]
        if len(kept) < len(body):
            detail += f" (truncated: the first {len(kept)} of {len(body)} bytes are kept)"
        self.incoming.reject(kept, f"{reason}: {detail}", signer, empaid)

    def status_fields(self) -> dict:
        """The bridge's figures for its status file."""
        counters = dict(self.counters)
        rejected = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:")}
        return {"broker": "%s:%d" % self.link.current if self.link.connected else None,
                **{k: v for k, v in counters.items() if not k.startswith("rejected:")}, "rejected": rejected}

    def serve_once(self, now: float) -> None:
        """Connect if needed (with backoff), take a batch of messages and start opening it (on the workers),
        and meanwhile handle the batch taken the turn before."""
        if self.signers is not None and self.signers.poll(now):
            self.trust = self.signers.trust
            self.settings = dataclasses.replace(self.settings, allowed_dns=self.signers.allowed)
            self._accepted.clear()
        try:
            if not self.link.ensure_connected(now):
                self._opening = None  # taken on a connection now lost: the broker redelivers them
                time.sleep(0.05)
                return
            frames = self._take(0.2 if self._opening is None else 0.0)
            opening, self._opening = self._opening, None
            if frames:
                self._opening = frames, self.opener.open([frame.body for frame in frames])
            if opening is not None:
                self.handle(*opening)
        except BrokerUnavailable as exc:
            log.warning("%s; reconnecting", exc)
            self._opening = None
            self.link.close()
        except (OSError, ZmqsecError) as exc:
            # Not stored, so not acknowledged: drop the connection and the broker redelivers it later.
            log.error("cannot store a message (%s); reconnecting, the broker will redeliver it", exc)
            self._opening = None
            self.link.failed(time.monotonic())

    def _take(self, wait: float) -> list[Frame]:
        """Up to BATCH messages: the first within ``wait`` seconds, the rest as long as they come within BATCH_WAIT."""
        frames = []
        frame, until = self.link.next_message(wait), time.monotonic() + BATCH_WAIT
        while frame is not None:
            frames.append(frame)
            if len(frames) >= BATCH or time.monotonic() >= until:
                break
            frame = self.link.next_message(0)
        return frames

    def run(self, stop, status) -> None:
        """Serve until ``stop.requested``; ``status`` is a :class:`zmqsec.StatusFile`."""
        try:
            while not stop.requested:
                self.serve_once(time.monotonic())
                if self.publisher is not None:
                    self.publisher.tick()
                if status.due():
                    status.write(self.status_fields())
        finally:
            if self._opening is not None and self.link.connected:  # a batch taken: store and acknowledge it
                try:
                    self.handle(*self._opening)
                except (BrokerUnavailable, OSError, ZmqsecError) as exc:
                    log.warning("the last batch is left to the broker to redeliver (%s)", exc)
            status.write(self.status_fields())
            self.link.close()
            self.opener.close()
            if self.publisher is not None:
                self.publisher.close()
