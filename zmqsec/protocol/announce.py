"""Key announcements: an epoch key in a multi-recipient CMS envelope, signed by the publisher.

Building and opening are pure; the trust decision is the trust layer's
(:meth:`keys.trust.TrustStore.validate`).  A reader verifies the signature and
the publisher's certificate *before* it spends a private-key operation on the
envelope, then confirms the key it unwrapped (docs/PROTOCOL.md §4).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from zmqsec.keys.dn import DnAllowList, slash_dn
from zmqsec.errors import RejectReason, Scope, ZmqsecError, scoped
from zmqsec.keys.errors import CertificateRejected
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import CrlPolicy, TrustStore, Usage

from zmqsec.crypto import cms, der, enveloped, signed
from .frames import (
    ANNOUNCEMENT,
    Announcement,
    GroupAnnouncement,
    TreeAnnouncement,
    group_topic,
    stream_name,
    topic_for,
    tree_topic,
)
from .groups import kek_id
from .primitives import (
    HEADER_ATTRIBUTE,
    MAX_TREE_BITS,
    header_digest,
    KeyRecordError,
    decode_group_record,
    decode_key_record,
    decode_tree_record,
    encode_group_record,
    encode_key_record,
    encode_tree_record,
)
from .tree import NodeKey


class AnnouncementRejected(ZmqsecError):
    """A key announcement was refused: ``reason`` says why and ``scope`` (if any) what part of it
    the reason is about, for counters and logs (``publisher-revoked``)."""

    def __init__(self, reason: RejectReason, message: str, scope: Scope | None = None,
                 signed_header: tuple | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.scope = scope
        self.signed_header = signed_header  # HEADER_MISMATCH: the header the key record says (see signed_header())

    @property
    def name(self) -> str:
        """The counter name: the reason, prefixed by its scope."""
        return scoped(self.scope, self.reason) if self.scope else str(self.reason)


@dataclass(frozen=True)
class Publisher:
    """A publisher identity as a reader learned it from a verified announcement."""

    certificate: x509.Certificate
    signed_at: dt.datetime | None = None  # the announcement's CMS signingTime

    @functools.cached_property
    def dn(self) -> str:  # formatted once per publisher, not once per delivered message
        """The publisher's subject DN in slash form."""
        return slash_dn(self.certificate.subject)


@dataclass(frozen=True)
class EpochKey:
    """An epoch key, unwrapped from a verified announcement and confirmed, with who published it."""

    stream_id: bytes
    epoch: int
    key: bytes
    publisher: Publisher


@dataclass(frozen=True)
class GroupKey:
    """The key of a reader group at one generation: announcements wrap epoch keys to it for the group's members."""

    tag: bytes
    generation: int
    key: bytes

    @property
    def key_id(self) -> bytes:
        """The CMS KEKRecipientInfo key identifier, ``<tag>.<generation>``."""
        return kek_id(self.tag, self.generation)

    def __repr__(self) -> str:  # never show key material
        return f"GroupKey(tag={self.tag!r}, generation={self.generation})"


def _header_value(topic: bytes, stream_id: bytes, number: int) -> bytes:
    """The DER value of the header attribute: an OCTET STRING holding the header's digest."""
    return der.encode(0x04, header_digest(topic, stream_id, number))


def header_attribute(topic: bytes, stream_id: bytes, number: int) -> bytes:
    """The signed attribute that binds an announcement's header (topic, stream id, epoch or generation) to its
    signature (docs/PROTOCOL.md §4.3)."""
    return signed.attribute(HEADER_ATTRIBUTE, _header_value(topic, stream_id, number))


def make_announcement(
    stream: str | bytes,
    stream_id: bytes,
    epoch: int,
    key: bytes,
    recipients: Sequence[enveloped.Recipient],
    credential: Credential,
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> Announcement:
    """Wrap ``key`` for every recipient (reader certificates, or group keys) and sign the envelope."""
    topic = topic_for(stream, ANNOUNCEMENT)
    record = encode_key_record(stream_name(topic), stream_id, epoch, key)
    envelope = enveloped.envelope(record, recipients)
    signature = signed.sign(envelope, credential, clock=clock, attributes=[header_attribute(topic, stream_id, epoch)])
    return Announcement(topic, stream_id, epoch, envelope, signature)


def make_group_announcement(
    stream: str | bytes,
    stream_id: bytes,
    group: GroupKey,
    members: Sequence[enveloped.Recipient],
    credential: Credential,
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> GroupAnnouncement:
    """Wrap a group key for the group's members and sign the envelope."""
    topic = group_topic(stream, group.tag)
    record = encode_group_record(stream_name(topic), stream_id, group.tag, group.generation, group.key)
    envelope = enveloped.envelope(record, members)
    signature = signed.sign(envelope, credential, clock=clock,
                            attributes=[header_attribute(topic, stream_id, group.generation)])
    return GroupAnnouncement(topic, stream_id, group.generation, envelope, signature)


@dataclass(frozen=True)
class TreeKeys:
    """What a tree announcement carried: the keys in it, and the nodes whose keys follow from the first of them,
    each from the one before (:func:`zmqsec.protocol.primitives.tree_derive`)."""

    tag: bytes
    generation: int
    keys: tuple[NodeKey, ...]
    derived: tuple[tuple[bytes, int], ...]


def make_tree_announcement(
    stream: str | bytes,
    stream_id: bytes,
    to: bytes,
    keys: Sequence[NodeKey],
    derived: Sequence[tuple[bytes, int]],
    recipients: Sequence[enveloped.Recipient],
    credential: Credential,
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> TreeAnnouncement:
    """Wrap tree node keys for the readers under node ``to`` (``recipients``: that node's key, for an update; a
    reader's certificate, for its path) and sign the envelope.  Its topic carries the first 32 bits of ``to``,
    its generation is the first key's."""
    topic = tree_topic(stream, to[:MAX_TREE_BITS])
    generation = keys[0].generation
    record = encode_tree_record(stream_name(topic), stream_id, to, generation,
                                [(k.tag, k.generation, k.key) for k in keys], derived)
    envelope = enveloped.envelope(record, recipients)
    signature = signed.sign(envelope, credential, clock=clock, attributes=[header_attribute(topic, stream_id, generation)])
    return TreeAnnouncement(topic, stream_id, generation, envelope, signature)


def check_signature(announcement: Announcement | GroupAnnouncement | TreeAnnouncement) -> signed.Verified:
    """The announcement's CMS signature checked, its signed header first, before any signature math: a genuine
    announcement re-sent under another header costs a parse (required from version 2; checked when present).
    Raises :class:`cms.CmsError` (:class:`cms.AttributeMismatch` for a header not the signed one).  Whether the
    signer is the publisher is the caller's question (:func:`verify_announcement`)."""
    number = announcement.epoch if isinstance(announcement, Announcement) else announcement.generation
    header = {HEADER_ATTRIBUTE: _header_value(announcement.topic, announcement.stream_id, number)}
    return signed.verify_signature(announcement.signature, announcement.envelope, attributes=header,
                                   required=announcement.version >= 2)


def verify_announcement(
    announcement: Announcement | GroupAnnouncement | TreeAnnouncement,
    trust: TrustStore,
    *,
    allowed_publishers: DnAllowList | None = None,
    crl: CrlPolicy = CrlPolicy.REQUIRE,
    at: dt.datetime | None = None,
) -> Publisher:
    """Check the announcement's signature and its signer's certificate; return the publisher.

    The header the signature carries is compared with the frame's first (:func:`check_signature`)."""
    try:
        verified = check_signature(announcement)
    except cms.AttributeMismatch as exc:
        raise AnnouncementRejected(RejectReason.HEADER_MISMATCH, f"announcement header not the signed one: {exc}") \
            from None
    except cms.CmsError as exc:
        raise AnnouncementRejected(exc.reason, f"announcement signature: {exc}", Scope.ANNOUNCEMENT) from None
    try:
        trust.validate(verified.signer, usage=Usage.SIGN, untrusted=verified.certificates[1:],
                       allowed_dns=allowed_publishers, crl=crl, at=at)
    except CertificateRejected as exc:
        raise AnnouncementRejected(exc.reason, f"announcement publisher refused: {exc}", Scope.PUBLISHER) from None
    return Publisher(verified.signer, verified.signing_time)


def signed_header(announcement: Announcement | GroupAnnouncement | TreeAnnouncement) -> tuple:
    """The announcement's header as its key record must repeat it: (stream name, stream id, epoch) or
    (stream name, stream id, tag, generation)."""
    if isinstance(announcement, (GroupAnnouncement, TreeAnnouncement)):
        return (stream_name(announcement.topic), announcement.stream_id, announcement.tag, announcement.generation)
    return stream_name(announcement.topic), announcement.stream_id, announcement.epoch


def open_announcement(announcement: Announcement, publisher: Publisher, credential: Credential,
                      groups: Mapping[bytes, bytes] | None = None) -> EpochKey:
    """Decrypt a verified announcement with our key (or a group key we hold: key id -> key) and confirm
    the epoch key inside."""
    try:
        record = enveloped.open_envelope(announcement.envelope, credential, keks=groups)
    except cms.NotARecipient:
        if not enveloped.recipients(announcement.envelope).key_transport:
            raise AnnouncementRejected(RejectReason.NO_GROUP_KEY,
                                       f"epoch {announcement.epoch}: wrapped for reader groups only, and we hold none "
                                       "of their current keys (yet, or any more)") from None
        raise AnnouncementRejected(RejectReason.NOT_A_RECIPIENT,
                                   f"epoch {announcement.epoch}: the envelope holds no key for us (not authorized, or revoked)") from None
    except cms.CmsError as exc:
        raise AnnouncementRejected(exc.reason, f"epoch {announcement.epoch}: {exc}", Scope.ENVELOPE) from None
    try:
        topic, stream_id, epoch, key = decode_key_record(record)
    except KeyRecordError as exc:
        raise AnnouncementRejected(RejectReason.KEY_CONFIRMATION, f"epoch {announcement.epoch}: {exc}") from None
    if (topic, stream_id, epoch) != signed_header(announcement):
        raise AnnouncementRejected(RejectReason.HEADER_MISMATCH, "announcement header does not match the signed key "
                                   "record", signed_header=(topic, stream_id, epoch))
    return EpochKey(stream_id, epoch, key, publisher)


def _decrypt(envelope: bytes, what: str, credential: Credential | None,
             keks: Mapping[bytes, bytes] | None = None) -> bytes:
    """The record in a group key or tree announcement's envelope, opened with our key or a key we hold."""
    try:
        return enveloped.open_envelope(envelope, credential, keks=keks)
    except cms.NotARecipient:
        raise AnnouncementRejected(RejectReason.NOT_A_RECIPIENT,
                                   f"{what}: the envelope holds no key for us (not authorized, or revoked)") from None
    except cms.CmsError as exc:
        raise AnnouncementRejected(exc.reason, f"{what}: {exc}", Scope.ENVELOPE) from None


def open_group_announcement(announcement: GroupAnnouncement, credential: Credential) -> GroupKey:
    """Decrypt a verified group key announcement with our key and confirm the group key inside."""
    what = f"group {announcement.tag.decode()!r} generation {announcement.generation}"
    record = _decrypt(announcement.envelope, what, credential)
    try:
        name, stream_id, tag, generation, key = decode_group_record(record)
    except KeyRecordError as exc:
        raise AnnouncementRejected(RejectReason.KEY_CONFIRMATION, f"{what}: {exc}") from None
    if (name, stream_id, tag, generation) != signed_header(announcement):
        raise AnnouncementRejected(RejectReason.HEADER_MISMATCH, "group announcement header does not match the signed "
                                   "key record", signed_header=(name, stream_id, tag, generation))
    return GroupKey(tag, generation, key)


def open_tree_announcement(announcement: TreeAnnouncement, credential: Credential | None,
                           keks: Mapping[bytes, bytes] | None = None) -> TreeKeys:
    """Decrypt a verified tree announcement with our key or a tree key we hold (key id -> key), and confirm the
    keys inside."""
    what = f"tree node {announcement.tag.decode()!r} generation {announcement.generation}"
    record = _decrypt(announcement.envelope, what, credential, keks)
    try:
        name, stream_id, tag, generation, keys, derived = decode_tree_record(record)
    except KeyRecordError as exc:
        raise AnnouncementRejected(RejectReason.KEY_CONFIRMATION, f"{what}: {exc}") from None
    if (name, stream_id, tag[:MAX_TREE_BITS], generation) != signed_header(announcement):
        raise AnnouncementRejected(RejectReason.HEADER_MISMATCH, "tree announcement header does not match the signed "
                                   "key record", signed_header=(name, stream_id, tag[:MAX_TREE_BITS], generation))
    if generation != keys[0][1]:
        raise AnnouncementRejected(RejectReason.KEY_CONFIRMATION, f"{what}: the record's generation is not its first "
                                   "key's")
    return TreeKeys(tag, generation, tuple(NodeKey(*k) for k in keys), tuple(derived))
