"""CMS SignedData (RFC 5652 §5): one signer, signed attributes, detached or attached content.

Signing embeds the signer's certificate (and chain); verification proves that
the holder of the embedded certificate's key signed the content.  Whether that
certificate is acceptable is the trust layer's decision, made by the caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import signing
from .cms import (
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


def sign(
    content: bytes,
    credential: KeyHolder,
    *,
    digest: str = "sha256",
    detached: bool = True,
    extra_certs: Sequence[x509.Certificate] = (),
    clock: Callable[[], dt.datetime] | None = None,
) -> bytes:
    """DER ContentInfo(SignedData) over ``content`` with signed attributes, embedding the signer's certificate."""
    if digest not in HASHES:
        raise UnsupportedAlgorithm(f"digest {digest} unsupported; use one of {', '.join(HASHES)}")
    now = (clock or (lambda: dt.datetime.now(dt.timezone.utc)))().replace(microsecond=0)
    message_digest = hashlib.new(digest, content).digest()
    attrs = [
        asn1_cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        asn1_cms.CMSAttribute({"type": "signing_time", "values": [asn1_cms.Time({"utc_time": now})]}),
        asn1_cms.CMSAttribute({"type": "message_digest", "values": [message_digest]}),
    ]
    # DER orders a SET OF by encoding; OpenSSL re-encodes before verifying.
    signed_attrs = asn1_cms.CMSAttributes(sorted(attrs, key=lambda a: a.dump()))
    signature = signing.sign(credential.key, signed_attrs.dump(), digest)
    signer = asn1_cms.SignerInfo({
        "version": "v1",
        "sid": asn1_cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(credential.certificate)}),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": signing.cms_algorithm(credential.key, digest)},
        "signature": signature,
    })
    signed = asn1_cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": None if detached else content},
        "certificates": [asn1_cert(c) for c in (credential.certificate, *credential.chain, *extra_certs)],
        "signer_infos": [signer],
    })
    return asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


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


@parsing
def verify_signature(der: bytes, content: bytes | None = None) -> Verified:
    """Check the (single) signature of a SignedData; ``content`` for a detached one.

    This proves the holder of the embedded signer certificate's key signed the
    content.  Whether that certificate is acceptable is the trust layer's call
    (``zmqsec.keys.trust.TrustStore.validate``), made by the caller.
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
