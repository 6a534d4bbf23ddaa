"""The one CMS implementation (RFC 5652): multi-recipient EnvelopedData and SignedData.

Used by the stream (key announcements) and by the STOMP bridge (S/MIME), and
held to the openssl CLI by the tests in both directions.  Pure: bytes in,
bytes out, no files, no sockets.  Structures are built and parsed with
asn1crypto; the primitives are pyca/cryptography's.

Supported algorithms (see docs/PROTOCOL.md):

* key transport: RSAES-OAEP (SHA-256/MGF1-SHA-256 when we encrypt; any SHA-2
  or SHA-1 when we decrypt) and RSAES-PKCS1-v1_5 (for legacy peers);
* key wrap (KEKRecipientInfo, for the stream's group keys): AES key wrap
  (RFC 3394) with a 128/192/256-bit key-encryption key named by an identifier;
* content encryption: AES-128/192/256-CBC (what ``openssl cms -encrypt -aes*``
  and APEL SSM use);
* signatures: RSA PKCS#1 v1.5 and ECDSA over SHA-1/SHA-2, with or without
  signed attributes, detached or attached.

EnvelopedData is not authenticated by itself: the stream signs every envelope
and checks a key-confirmation value after decrypting (docs/PROTOCOL.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from keys.errors import ZmqsecError
from keys.pemfiles import Credential

MAX_CMS_BYTES = 64 * 1024 * 1024

_HASHES = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_AES_CBC = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_AES_WRAP = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}


class CmsError(ZmqsecError):
    """A CMS structure was refused; ``reason`` is a stable token for counters."""

    reason = "cms-error"


class MalformedCms(CmsError):
    reason = "malformed-cms"


class UnsupportedAlgorithm(CmsError):
    reason = "unsupported-algorithm"


class NotARecipient(CmsError):
    """No RecipientInfo in the envelope is addressed to our certificate."""

    reason = "not-a-recipient"


class DecryptionFailed(CmsError):
    reason = "decryption-failed"


class SignatureInvalid(CmsError):
    reason = "bad-signature"


# -- helpers -------------------------------------------------------------------


def _asn1_cert(cert: x509.Certificate) -> ax509.Certificate:
    return ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = _asn1_cert(cert)
    return cms.IssuerAndSerialNumber({"issuer": parsed.issuer, "serial_number": parsed.serial_number})


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _matches(identifier, cert: x509.Certificate) -> bool:
    """Does a RecipientIdentifier / SignerIdentifier name ``cert``?"""
    if identifier.name == "issuer_and_serial_number":
        ias = identifier.chosen
        return (ias["serial_number"].native == cert.serial_number
                and ias["issuer"].dump() == _asn1_cert(cert).issuer.dump())
    if identifier.name == "subject_key_identifier":
        return identifier.chosen.native == _ski(cert)
    return False


def _load_content_info(der: bytes, expected: str) -> cms.ContentInfo:
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise MalformedCms("CMS input must be bytes")
    if len(der) > MAX_CMS_BYTES:
        raise MalformedCms(f"CMS structure of {len(der)} bytes exceeds the {MAX_CMS_BYTES}-byte limit")
    try:
        info = cms.ContentInfo.load(bytes(der), strict=True)
        content_type = info["content_type"].native
        if content_type != expected:
            raise MalformedCms(f"expected CMS {expected}, got {content_type}")
        info["content"].native  # force a full parse now, inside the try  # noqa: B018
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise MalformedCms(f"not a DER CMS {expected} ({exc.__class__.__name__})") from None
    return info


def _parsing(func):
    """asn1crypto parses lazily, so a malformed field can surface at any access:
    every library exception inside a decoder becomes :class:`MalformedCms`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CmsError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, x509.DuplicateExtension) as exc:
            raise MalformedCms(f"malformed CMS structure ({exc.__class__.__name__})") from None

    return wrapper


# -- EnvelopedData -------------------------------------------------------------


class KeyTransport:
    """How a content-encryption key is wrapped for one RSA recipient."""

    OAEP = "rsaes_oaep"
    PKCS1V15 = "rsaes_pkcs1v15"


_OAEP_SHA256 = algos.RSAESOAEPParams({
    "hash_algorithm": {"algorithm": "sha256"},
    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
})
_KEY_TRANSPORT_ALGORITHM = {  # AlgorithmIdentifier DER, encoded once
    KeyTransport.OAEP: cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": _OAEP_SHA256}).dump(),
    KeyTransport.PKCS1V15: cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump(),
}
_KEY_WRAP_ALGORITHM = {size: cms.KeyEncryptionAlgorithm({"algorithm": name}).dump() for size, name in _AES_WRAP.items()}
_OAEP_PADDING = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
_VERSION_0, _VERSION_4 = cms.CMSVersion("v0").dump(), cms.CMSVersion("v4").dump()
_ENVELOPED_DATA_OID = cms.ContentType("enveloped_data").dump()


@dataclass(frozen=True)
class Kek:
    """A symmetric key-encryption key and the identifier a KEKRecipientInfo names it by."""

    key_id: bytes
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) not in _AES_WRAP:
            raise ValueError("a key-encryption key is 16, 24 or 32 bytes (AES key wrap)")

    def __repr__(self) -> str:  # never show key material
        return f"Kek(key_id={self.key_id!r})"


# RecipientInfos are encoded by hand from DER pieces that asn1crypto or the certificate provide:
# asn1crypto's own encoder costs milliseconds per RecipientInfo, and a registry has thousands.


def _wrap_for(cert: x509.Certificate, cek: bytes, transport: str) -> bytes:
    """KeyTransRecipientInfo (version 0, issuerAndSerialNumber), DER."""
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm(f"recipient key {type(public).__name__} is not RSA; only RSA key transport is supported")
    if transport not in _KEY_TRANSPORT_ALGORITHM:
        raise UnsupportedAlgorithm(f"key transport {transport} unsupported")
    encrypted = public.encrypt(cek, _OAEP_PADDING if transport == KeyTransport.OAEP else padding.PKCS1v15())
    rid = _issuer_and_serial_der(cert)
    return _der(0x30, _VERSION_0 + rid + _KEY_TRANSPORT_ALGORITHM[transport] + _der(0x04, encrypted))


def _wrap_with(kek: Kek, cek: bytes) -> bytes:
    """KEKRecipientInfo (version 4, [2] IMPLICIT in the RecipientInfo CHOICE), DER."""
    kekid = _der(0x30, _der(0x04, kek.key_id))
    return _der(0xA2, _VERSION_4 + kekid + _KEY_WRAP_ALGORITHM[len(kek.key)] + _der(0x04, aes_key_wrap(kek.key, cek)))


def _issuer_and_serial_der(cert: x509.Certificate) -> bytes:
    """IssuerAndSerialNumber with the issuer Name and serial INTEGER exactly as the certificate encodes them."""
    tbs = cert.tbs_certificate_bytes
    _, pos, _ = _tlv(tbs, 0)  # into TBSCertificate
    tag, _, end = _tlv(tbs, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    serial_end = _tlv(tbs, pos)[2]
    issuer_start = _tlv(tbs, serial_end)[2]  # after the signature AlgorithmIdentifier
    return _der(0x30, tbs[issuer_start:_tlv(tbs, issuer_start)[2]] + tbs[pos:serial_end])


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``pos`` (certificates cryptography already parsed)."""
    first = data[pos + 1]
    if first < 0x80:
        return data[pos], pos + 2, pos + 2 + first
    n = first & 0x7F
    start = pos + 2 + n
    return data[pos], start, start + int.from_bytes(data[pos + 2:start], "big")


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV with a definite length."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_set(elements: list[bytes]) -> bytes:
    """A DER SET OF: elements in ascending order as octet strings, the shorter padded with zeros (X.690 11.6)."""
    width = max(map(len, elements))
    return _der(0x31, b"".join(sorted(elements, key=lambda e: e.ljust(width, b"\0"))))


def envelope(
    content: bytes,
    recipients: Sequence[x509.Certificate] = (),
    *,
    keks: Sequence[Kek] = (),
    transport: str = KeyTransport.OAEP,
    cipher: str = "aes256_cbc",
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``content`` once for every recipient certificate (KeyTransRecipientInfo) and every
    key-encryption key (KEKRecipientInfo); DER ContentInfo(EnvelopedData)."""
    if not recipients and not keks:
        raise CmsError("an envelope needs at least one recipient")
    if cipher not in _AES_CBC:
        raise UnsupportedAlgorithm(f"content cipher {cipher} unsupported; use one of {', '.join(_AES_CBC)}")
    cek, iv = rng(_AES_CBC[cipher]), rng(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    infos = [_wrap_for(cert, cek, transport) for cert in recipients] + [_wrap_with(k, cek) for k in keks]
    encrypted_content_info = cms.EncryptedContentInfo({
        "content_type": "data",
        "content_encryption_algorithm": {"algorithm": cipher, "parameters": iv},
        "encrypted_content": ciphertext,
    }).dump()
    # Assembled here rather than by asn1crypto, whose SET OF encoding slows down with thousands of
    # recipients (quadratic); each element is still asn1crypto's DER, and the set is in DER order.
    version = cms.CMSVersion("v2" if keks else "v0").dump()  # RFC 5652 6.1: v2 once any RecipientInfo is not v0
    enveloped = _der(0x30, version + _der_set(infos) + encrypted_content_info)
    return _der(0x30, _ENVELOPED_DATA_OID + _der(0xA0, enveloped))


def _unwrap(ktri: cms.KeyTransRecipientInfo, key) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedAlgorithm("key transport needs an RSA private key")
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    encrypted = ktri["encrypted_key"].native
    try:
        if name == "rsaes_oaep":
            params = algorithm["parameters"]
            hash_name = params["hash_algorithm"]["algorithm"].native if params else "sha1"
            mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native if params else "sha1"
            if hash_name not in _HASHES or mgf_hash not in _HASHES:
                raise UnsupportedAlgorithm(f"RSA-OAEP with {hash_name}/{mgf_hash} unsupported")
            return key.decrypt(encrypted, padding.OAEP(padding.MGF1(_HASHES[mgf_hash]()), _HASHES[hash_name](), None))
        if name == "rsaes_pkcs1v15":
            return key.decrypt(encrypted, padding.PKCS1v15())
    except ValueError:
        raise DecryptionFailed("the wrapped content key does not decrypt with our key") from None
    raise UnsupportedAlgorithm(f"key encryption algorithm {name} unsupported")


def _unwrap_kek(kekri: cms.KEKRecipientInfo, kek: bytes) -> bytes:
    name = kekri["key_encryption_algorithm"]["algorithm"].native
    if name != _AES_WRAP.get(len(kek)):
        raise UnsupportedAlgorithm(f"key wrap {name} does not fit a {8 * len(kek)}-bit key-encryption key")
    try:
        return aes_key_unwrap(kek, kekri["encrypted_key"].native)
    except (InvalidUnwrap, ValueError):
        raise DecryptionFailed("the wrapped content key does not unwrap with our key-encryption key") from None


@dataclass(frozen=True)
class Recipients:
    """Who an envelope is for: its certificates' RecipientIdentifiers are opaque here, KEK ids are not."""

    key_transport: int
    kek_ids: tuple[bytes, ...]


class _NotPlainDer(Exception):
    pass


def _strict_tlv(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """Like :func:`_tlv`, for untrusted input: definite lengths only, within ``limit``."""
    if pos + 2 > limit:
        raise _NotPlainDer
    first = data[pos + 1]
    if first == 0x80 or first > 0x84:  # indefinite (BER streaming) or absurd
        raise _NotPlainDer
    tag, start, end = _tlv(data, pos)
    if start > limit or end > limit:
        raise _NotPlainDer
    return tag, start, end


def _walk_envelope(der: bytes) -> tuple[list[tuple[int, bytes]], bytes] | None:
    """The RecipientInfos (tag, DER) and the EncryptedContentInfo of a definite-length EnvelopedData, found
    without parsing the recipients; None for anything else (BER from a streaming encoder), which asn1crypto
    then parses.  An envelope for 10,000 readers is found in microseconds instead of seconds."""
    try:
        n = len(der)
        tag, start, end = _strict_tlv(der, 0, n)
        _, _, oid_end = _strict_tlv(der, start, end)
        if tag != 0x30 or end != n or der[start:oid_end] != _ENVELOPED_DATA_OID:
            return None
        tag, start, end = _strict_tlv(der, oid_end, n)  # [0] EXPLICIT
        tag2, pos, end2 = _strict_tlv(der, start, end)  # EnvelopedData
        if tag != 0xA0 or tag2 != 0x30:
            return None
        tag, _, pos = _strict_tlv(der, pos, end2)  # version
        tag, start, end = _strict_tlv(der, pos, end2)
        if tag == 0xA0:  # originatorInfo
            tag, start, end = _strict_tlv(der, end, end2)
        if tag != 0x31:
            return None
        elements, pos = [], start
        while pos < end:
            tag, _, next_pos = _strict_tlv(der, pos, end)
            elements.append((tag, der[pos:next_pos]))
            pos = next_pos
        tag, _, eci_end = _strict_tlv(der, end, end2)
        return (elements, der[end:eci_end]) if tag == 0x30 else None
    except (_NotPlainDer, IndexError):
        return None


def _second_field(element: bytes) -> tuple[int, bytes]:
    """(tag, DER) of the field after the version in a RecipientInfo: ktri's rid, kekri's kekid."""
    _, start, end = _strict_tlv(element, 0, len(element))
    _, _, pos = _strict_tlv(element, start, end)
    tag, _, field_end = _strict_tlv(element, pos, end)
    return tag, element[pos:field_end]


def _kek_id(element: bytes) -> bytes:
    _, kekid = _second_field(element)
    tag, start, end = _strict_tlv(kekid, 2 if kekid[1] < 0x80 else 2 + (kekid[1] & 0x7F), len(kekid))
    if tag != 0x04:  # keyIdentifier OCTET STRING
        raise _NotPlainDer
    return kekid[start:end]


@_parsing
def recipients(der: bytes) -> Recipients:
    walked = _walk_envelope(der)
    if walked is not None:
        try:
            infos = walked[0]
            return Recipients(sum(1 for tag, _ in infos if tag == 0x30),
                              tuple(_kek_id(e) for tag, e in infos if tag == 0xA2))
        except (_NotPlainDer, IndexError):
            pass
    infos = _load_content_info(der, "enveloped_data")["content"]["recipient_infos"]
    return Recipients(sum(1 for i in infos if i.name == "ktri"),
                      tuple(i.chosen["kekid"]["key_identifier"].native for i in infos if i.name == "kekri"))


def _find_fast(elements: list[tuple[int, bytes]], credential: Credential | None,
               keks: Mapping[bytes, bytes] | None) -> bytes | None:
    """Our content key from the one RecipientInfo that names us, comparing DER bytes (only that one is parsed)."""
    ours = _issuer_and_serial_der(credential.certificate) if credential is not None else None
    ski = _ski(credential.certificate) if credential is not None else None
    for tag, element in elements:
        try:
            if tag == 0x30 and credential is not None:
                rid_tag, rid = _second_field(element)
                if rid == ours or (rid_tag == 0x80 and ski is not None and rid[2:] == ski and rid[1] == len(ski)):
                    return _unwrap(cms.RecipientInfo.load(element).chosen, credential.key)
            elif tag == 0xA2 and keks and (kek := keks.get(_kek_id(element))):
                return _unwrap_kek(cms.RecipientInfo.load(element).chosen, kek)
        except (_NotPlainDer, IndexError):
            continue
    return None


@_parsing
def open_envelope(der: bytes, credential: Credential | None = None, *, keks: Mapping[bytes, bytes] | None = None) -> bytes:
    """Decrypt an EnvelopedData addressed (among others) to ``credential``'s certificate or to one of
    the key-encryption keys ``keks`` (key identifier -> key)."""
    if not isinstance(der, (bytes, bytearray, memoryview)) or len(der) > MAX_CMS_BYTES:
        _load_content_info(der, "enveloped_data")  # raises the specific error
    walked = _walk_envelope(bytes(der))
    cek = _find_fast(walked[0], credential, keks) if walked is not None else None
    if cek is not None:
        eci = cms.EncryptedContentInfo.load(walked[1], strict=True)
    elif walked is not None and len(walked[0]) > 64:
        raise NotARecipient("the envelope has no RecipientInfo for our certificate or keys")
    else:  # BER, or few recipients: the full parse, which also matches names re-encoded by other tools
        enveloped = _load_content_info(der, "enveloped_data")["content"]
        for info in enveloped["recipient_infos"]:
            if info.name == "ktri" and credential is not None and _matches(info.chosen["rid"], credential.certificate):
                cek = _unwrap(info.chosen, credential.key)
                break
            if info.name == "kekri" and keks and (kek := keks.get(info.chosen["kekid"]["key_identifier"].native)):
                cek = _unwrap_kek(info.chosen, kek)
                break
        if cek is None:
            raise NotARecipient("the envelope has no RecipientInfo for our certificate or keys")
        eci = enveloped["encrypted_content_info"]
    algorithm = eci["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name not in _AES_CBC:
        raise UnsupportedAlgorithm(f"content encryption {name} unsupported (AES-CBC only)")
    if len(cek) != _AES_CBC[name]:
        raise DecryptionFailed("the content key has the wrong length for its cipher")
    iv = algorithm["parameters"].native
    ciphertext = eci["encrypted_content"].native
    if not isinstance(iv, bytes) or len(iv) != 16 or ciphertext is None or len(ciphertext) % 16:
        raise MalformedCms("AES-CBC parameters or ciphertext length are malformed")
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionFailed("content does not decrypt (bad padding): wrong key or altered data") from None


# -- SignedData ------------------------------------------------------------------


def _signature_algorithm(key, digest: str) -> dict:
    if isinstance(key, rsa.RSAPrivateKey):
        return {"algorithm": "rsassa_pkcs1v15"}  # rsaEncryption, as openssl writes it
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"algorithm": f"{digest}_ecdsa"}
    raise UnsupportedAlgorithm(f"cannot sign with a {type(key).__name__}")


def _raw_sign(key, data: bytes, digest: str) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), _HASHES[digest]())
    return key.sign(data, ec.ECDSA(_HASHES[digest]()))


def sign(
    content: bytes,
    credential: Credential,
    *,
    digest: str = "sha256",
    detached: bool = True,
    extra_certs: Sequence[x509.Certificate] = (),
    clock: Callable[[], dt.datetime] | None = None,
) -> bytes:
    """DER ContentInfo(SignedData) over ``content`` with signed attributes, embedding the signer's certificate."""
    if digest not in _HASHES:
        raise UnsupportedAlgorithm(f"digest {digest} unsupported; use one of {', '.join(_HASHES)}")
    now = (clock or (lambda: dt.datetime.now(dt.timezone.utc)))().replace(microsecond=0)
    message_digest = hashlib.new(digest, content).digest()
    attrs = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": now})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [message_digest]}),
    ]
    # DER orders a SET OF by encoding; OpenSSL re-encodes before verifying.
    signed_attrs = cms.CMSAttributes(sorted(attrs, key=lambda a: a.dump()))
    signature = _raw_sign(credential.key, signed_attrs.dump(), digest)
    signer = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": _issuer_and_serial(credential.certificate)}),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": _signature_algorithm(credential.key, digest),
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": None if detached else content},
        "certificates": [_asn1_cert(c) for c in (credential.certificate, *credential.chain, *extra_certs)],
        "signer_infos": [signer],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


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
    try:
        if isinstance(public, rsa.RSAPublicKey):
            if sig_alg == "rsassa_pss":
                raise UnsupportedAlgorithm("RSASSA-PSS signatures are not supported")
            public.verify(signature, data, padding.PKCS1v15(), _HASHES[digest]())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(_HASHES[digest]()))
        else:
            raise UnsupportedAlgorithm(f"signer key {type(public).__name__} unsupported")
    except InvalidSignature:
        raise SignatureInvalid("the signature does not verify with the signer certificate's key") from None


@_parsing
def verify_signature(der: bytes, content: bytes | None = None) -> Verified:
    """Check the (single) signature of a SignedData; ``content`` for a detached one.

    This proves the holder of the embedded signer certificate's key signed the
    content.  Whether that certificate is acceptable is the trust layer's call
    (``keys.trust.TrustStore.validate``), made by the caller.
    """
    signed = _load_content_info(der, "signed_data")["content"]
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
            except ValueError:
                raise MalformedCms("an embedded certificate does not parse") from None
    signer = next((c for c in certs if _matches(info["sid"], c)), None)
    if signer is None:
        raise SignatureInvalid("the signer's certificate is not embedded in the SignedData")
    digest = info["digest_algorithm"]["algorithm"].native
    if digest not in _HASHES:
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
