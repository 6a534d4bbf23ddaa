"""CMS SignedData (RFC 5652 §5): one signer, signed attributes, detached or attached content.

Signing embeds the signer's certificate (and chain); verification proves that
the holder of the embedded certificate's key signed the content.  Whether that
certificate is acceptable is the trust layer's decision, made by the caller.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import der, signing
from .cms import (
    AttributeMismatch,
    KeyHolder,
    MalformedCms,
    SignatureInvalid,
    SignerNotEmbedded,
    UnsupportedAlgorithm,
    asn1_cert,
    issuer_and_serial,
    load_content_info,
    names,
    parsing,
)
from .signing import HASHES


@dataclass(frozen=True)
class _Signer:
    """The DER of everything in a SignedData that depends only on the signer and the digest (made once)."""

    sid: bytes  # SignerIdentifier (issuerAndSerialNumber)
    digest_algorithm: bytes  # DigestAlgorithmIdentifier
    signature_algorithm: bytes  # SignatureAlgorithmIdentifier
    certificates: bytes  # [0] IMPLICIT CertificateSet


_VERSION_1 = der.encode(0x02, b"\x01")
_DATA = asn1_cms.ContentType("data").dump()
_SIGNED_DATA = asn1_cms.ContentType("signed_data").dump()
_CONTENT_TYPE_ATTR = asn1_cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump()
_SIGNING_TIME = asn1_cms.CMSAttributeType("signing_time").dump()
_MESSAGE_DIGEST = asn1_cms.CMSAttributeType("message_digest").dump()


@functools.lru_cache(maxsize=32)
def _signer(certificates: tuple[x509.Certificate, ...], digest: str, algorithm: str) -> _Signer:
    cert_set = asn1_cms.CertificateSet([asn1_cert(c) for c in certificates]).dump()
    return _Signer(
        sid=asn1_cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(certificates[0])}).dump(),
        digest_algorithm=asn1_cms.DigestAlgorithm({"algorithm": digest}).dump(),
        signature_algorithm=asn1_cms.SignedDigestAlgorithm({"algorithm": algorithm}).dump(),
        certificates=b"\xa0" + cert_set[1:],  # SET OF -> [0] IMPLICIT
    )


def _time(when: dt.datetime) -> bytes:
    """A CMS Time: UTCTime through 2049, GeneralizedTime after (RFC 5652 §11.3)."""
    if 1950 <= when.year < 2050:
        return der.encode(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return der.encode(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def attribute(oid: str, value: bytes) -> bytes:
    """A signed attribute (RFC 5652 §5.3): the dotted ``oid`` with one DER-encoded ``value``."""
    return der.encode(0x30, asn1_core.ObjectIdentifier(oid).dump() + der.encode(0x31, value))


def sign(
    content: bytes,
    credential: KeyHolder,
    *,
    digest: str = "sha256",
    detached: bool = True,
    extra_certs: Sequence[x509.Certificate] = (),
    clock: Callable[[], dt.datetime] | None = None,
    attributes: Sequence[bytes] = (),
) -> bytes:
    """DER ContentInfo(SignedData) over ``content`` with signed attributes (contentType, signingTime,
    messageDigest, and ``attributes``: more, each made by :func:`attribute`), embedding the signer's certificate
    and chain.

    The parts that depend only on the signer are encoded once (asn1crypto) and spliced with the few that
    change per message, so a signature costs little more than its private-key operation."""
    if digest not in HASHES:
        raise UnsupportedAlgorithm(f"digest {digest} unsupported; use one of {', '.join(HASHES)}")
    signer = _signer((credential.certificate, *credential.chain, *extra_certs), digest,
                     signing.cms_algorithm(credential.key, digest))
    now = (clock or (lambda: dt.datetime.now(dt.timezone.utc)))().replace(microsecond=0)
    attrs = [
        _CONTENT_TYPE_ATTR,
        der.encode(0x30, _SIGNING_TIME + der.encode(0x31, _time(now))),
        der.encode(0x30, _MESSAGE_DIGEST + der.encode(0x31, der.encode(0x04, hashlib.new(digest, content).digest()))),
        *attributes,
    ]
    # DER orders a SET OF by encoding; OpenSSL re-encodes before verifying.  Signed as a SET (0x31), carried
    # as [0] IMPLICIT (0xa0).
    signed_attrs = der.set_of(attrs)
    signature = signing.sign(credential.key, signed_attrs, digest)
    signer_info = der.encode(0x30, b"".join((
        _VERSION_1, signer.sid, signer.digest_algorithm, b"\xa0" + signed_attrs[1:], signer.signature_algorithm,
        der.encode(0x04, signature))))
    encap = der.encode(0x30, _DATA + (b"" if detached else der.encode(0xA0, der.encode(0x04, content))))
    signed = der.encode(0x30, b"".join((
        _VERSION_1, der.encode(0x31, signer.digest_algorithm), encap, signer.certificates,
        der.encode(0x31, signer_info))))
    return der.encode(0x30, _SIGNED_DATA + der.encode(0xA0, signed))


@dataclass(frozen=True)
class Verified:
    """The result of a good signature: what was signed, by which certificate."""

    content: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    digest: str
    signing_time: dt.datetime | None


def _verify_raw(cert: x509.Certificate, signature: bytes, data: bytes, digest: str, sig_alg: str) -> None:
    public = cert.public_key()
    if sig_alg == "rsassa_pss":
        raise UnsupportedAlgorithm("RSASSA-PSS signatures are not supported")
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise UnsupportedAlgorithm(f"signer key {type(public).__name__} unsupported")
    if not signing.verify(public, signature, data, digest):
        raise SignatureInvalid("the signature does not verify with the signer certificate's key")


def _check_attributes(signed_attrs, expected: Mapping[str, bytes], required: bool) -> None:
    """Each expected attribute (dotted OID -> DER of its one value) is signed with exactly that value; when not
    ``required``, only those present are checked."""
    present = {a["type"].dotted: a["values"] for a in signed_attrs or ()}
    for oid, value in expected.items():
        values = present.get(oid)
        if values is None:
            if required:
                raise AttributeMismatch(f"the signed attributes lack {oid}")
            continue
        if len(values) != 1 or values[0].dump() != value:
            raise AttributeMismatch(f"the signed attribute {oid} holds another value")


@parsing
def verify_signature(der: bytes, content: bytes | None = None, *, attributes: Mapping[str, bytes] | None = None,
                     required: bool = True) -> Verified:
    """Check the (single) signature of a SignedData; ``content`` for a detached one.

    This proves the holder of the embedded signer certificate's key signed the
    content.  Whether that certificate is acceptable is the trust layer's call
    (``zmqsec.keys.trust.TrustStore.validate``), made by the caller.

    ``attributes`` (dotted OID -> DER of the value) must be signed attributes with exactly those values (those
    present, when not ``required``): they are compared before any digest or signature math, so a signature
    carried under the wrong claims costs a parse (:class:`AttributeMismatch`).
    """
    signed = load_content_info(der, "signed_data")["content"]
    encap = signed["encap_content_info"]
    attached = encap["content"].native if encap["content"] else None
    if attached is not None and content is not None and attached != content:
        raise MalformedCms("both attached and detached content given, and they differ")
    data = content if content is not None else attached
    if data is None:
        raise MalformedCms("detached signature: the signed content must be supplied")
    if isinstance(data, str):
        data = data.encode()
    infos = signed["signer_infos"]
    if len(infos) != 1:
        raise MalformedCms(f"expected exactly one SignerInfo, found {len(infos)}")
    info = infos[0]
    if attributes:
        _check_attributes(info["signed_attrs"], attributes, required)
    certs = []
    for choice in signed["certificates"] or ():
        if choice.name == "certificate":
            try:
                certs.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except (ValueError, x509.InvalidVersion):
                raise MalformedCms("an embedded certificate does not parse") from None
    signer = next((c for c in certs if names(info["sid"], c)), None)
    if signer is None:
        raise SignerNotEmbedded("the signer's certificate is not embedded in the SignedData")
    digest = info["digest_algorithm"]["algorithm"].native
    if digest not in HASHES:
        raise UnsupportedAlgorithm(f"digest {digest} unsupported")
    sig_alg = info["signature_algorithm"]["algorithm"].native
    signing_time = None
    if info["signed_attrs"]:
        attrs = {a["type"].native: a["values"] for a in info["signed_attrs"]}
        md = attrs.get("message_digest")
        if md is None or attrs.get("content_type") is None:
            raise MalformedCms("signed attributes lack messageDigest or contentType")
        if not hmac.compare_digest(md[0].native, hashlib.new(digest, data).digest()):
            raise SignatureInvalid("the content does not match the signed message digest (altered content)")
        if "signing_time" in attrs:
            signing_time = attrs["signing_time"][0].native
        # The signature covers the attributes as a DER SET OF (tag 0x31), not as [0].
        to_verify = b"\x31" + info["signed_attrs"].dump()[1:]
    else:
        to_verify = data
    _verify_raw(signer, info["signature"].native, to_verify, digest, sig_alg)
    return Verified(bytes(data), signer, tuple(certs), digest, signing_time)
