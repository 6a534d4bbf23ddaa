"""Key announcements: an epoch key in a multi-recipient CMS envelope, signed by the publisher.

Building and opening are pure; the trust decision is the trust layer's
(:meth:`keys.trust.TrustStore.validate`).  A reader verifies the signature and
the publisher's certificate *before* it spends a private-key operation on the
envelope, then confirms the key it unwrapped (docs/PROTOCOL.md §4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509

from keys.dn import DnAllowList, slash_dn
from keys.errors import CertificateRejected, ZmqsecError
from keys.pemfiles import Credential
from keys.trust import CrlPolicy, TrustStore, Usage

from . import cms
from .frames import ANNOUNCEMENT, Announcement, stream_name, topic_for
from .primitives import KeyRecordError, decode_key_record, encode_key_record


class AnnouncementRejected(ZmqsecError):
    """A key announcement was refused; ``reason`` says why (for counters and logs)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Publisher:
    """A publisher identity as a reader learned it from a verified announcement."""

    certificate: x509.Certificate
    signed_at: dt.datetime | None = None  # the announcement's CMS signingTime

    @property
    def dn(self) -> str:
        return slash_dn(self.certificate.subject)


@dataclass(frozen=True)
class EpochKey:
    stream_id: bytes
    epoch: int
    key: bytes
    publisher: Publisher


def make_announcement(
    stream: str | bytes,
    stream_id: bytes,
    epoch: int,
    key: bytes,
    recipients: Iterable[x509.Certificate],
    credential: Credential,
    *,
    transport: str = cms.KeyTransport.OAEP,
    clock: Callable[[], dt.datetime] | None = None,
) -> Announcement:
    """Wrap ``key`` for every recipient and sign the envelope."""
    topic = topic_for(stream, ANNOUNCEMENT)
    record = encode_key_record(stream_name(topic), stream_id, epoch, key)
    envelope = cms.envelope(record, list(recipients), transport=transport)
    signature = cms.sign(envelope, credential, clock=clock)
    return Announcement(topic, stream_id, epoch, envelope, signature)


def verify_announcement(
    announcement: Announcement,
    trust: TrustStore,
    *,
    allowed_publishers: DnAllowList | None = None,
    crl: CrlPolicy = CrlPolicy.REQUIRE,
    at: dt.datetime | None = None,
) -> Publisher:
    """Check the announcement's signature and its signer's certificate; return the publisher."""
    try:
        verified = cms.verify_signature(announcement.signature, announcement.envelope)
    except cms.CmsError as exc:
        raise AnnouncementRejected(f"announcement-{exc.reason}", f"announcement signature: {exc}") from None
    try:
        trust.validate(verified.signer, usage=Usage.SIGN, untrusted=verified.certificates[1:],
                       allowed_dns=allowed_publishers, crl=crl, at=at)
    except CertificateRejected as exc:
        raise AnnouncementRejected(f"publisher-{exc.reason}", f"announcement publisher refused: {exc}") from None
    return Publisher(verified.signer, verified.signing_time)


def open_announcement(announcement: Announcement, publisher: Publisher, credential: Credential) -> EpochKey:
    """Decrypt a verified announcement with our key and confirm the epoch key inside."""
    try:
        record = cms.open_envelope(announcement.envelope, credential)
    except cms.NotARecipient:
        raise AnnouncementRejected("not-a-recipient",
                                   f"epoch {announcement.epoch}: the envelope holds no key for us (not authorized, or revoked)") from None
    except cms.CmsError as exc:
        raise AnnouncementRejected(f"envelope-{exc.reason}", f"epoch {announcement.epoch}: {exc}") from None
    try:
        topic, stream_id, epoch, key = decode_key_record(record)
    except KeyRecordError as exc:
        raise AnnouncementRejected("key-confirmation", f"epoch {announcement.epoch}: {exc}") from None
    if (topic, stream_id, epoch) != (stream_name(announcement.topic), announcement.stream_id, announcement.epoch):
        raise AnnouncementRejected("header-mismatch", "announcement header does not match the signed key record")
    return EpochKey(stream_id, epoch, key, publisher)
