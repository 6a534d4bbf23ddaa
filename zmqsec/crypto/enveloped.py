"""CMS EnvelopedData (RFC 5652 §6): one content encrypted once, its key wrapped for many recipients.

Recipients are certificates (KeyTransRecipientInfo, RSA key transport) and
symmetric key-encryption keys (KEKRecipientInfo, AES key wrap).  Opening finds
our one RecipientInfo by a DER walk that does not parse the others, so an
envelope for 10,000 readers opens in microseconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from asn1crypto import algos, cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from . import der
from .cms import (
    MAX_CMS_BYTES,
    CmsError,
    DecryptionFailed,
    KeyHolder,
    MalformedCms,
    NotARecipient,
    UnsupportedAlgorithm,
    load_content_info,
    names,
    parsing,
    subject_key_id,
)
from .signing import HASHES

_AES_CBC = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_AES_WRAP = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}


class KeyTransport:
    """How a content-encryption key is wrapped for one RSA recipient."""

    OAEP = "rsaes_oaep"
    PKCS1V15 = "rsaes_pkcs1v15"


_OAEP_SHA256 = algos.RSAESOAEPParams({
    "hash_algorithm": {"algorithm": "sha256"},
    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
})
_KEY_TRANSPORT_ALGORITHM = {  # AlgorithmIdentifier DER, encoded once
    KeyTransport.OAEP: asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": _OAEP_SHA256}).dump(),
    KeyTransport.PKCS1V15: asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump(),
}
_KEY_WRAP_ALGORITHM = {size: asn1_cms.KeyEncryptionAlgorithm({"algorithm": name}).dump() for size, name in _AES_WRAP.items()}
_OAEP_PADDING = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
_VERSION_0, _VERSION_4 = asn1_cms.CMSVersion("v0").dump(), asn1_cms.CMSVersion("v4").dump()
_ENVELOPED_DATA_OID = asn1_cms.ContentType("enveloped_data").dump()


class Recipient(Protocol):
    """Someone an envelope is for: wraps the content-encryption key into one DER RecipientInfo.

    New recipient types (EC key agreement, tree KEKs) plug in here without touching the envelope."""

    version: int  # of the RecipientInfo (RFC 5652 6.1: the envelope is v2 once any is not 0)

    def wrap(self, cek: bytes) -> bytes:
        """The RecipientInfo (DER, as an element of the RecipientInfos SET) carrying ``cek``."""


def check_key_transport(public_key) -> None:
    """Raise :class:`UnsupportedAlgorithm` unless ``public_key`` can receive a key by transport (RSA)."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm(f"the key is {type(public_key).__name__}, but a recipient's key must be RSA "
                                   "(keys are wrapped by RSA key transport)")


class CertificateRecipient:
    """A certificate holder: KeyTransRecipientInfo (version 0, issuerAndSerialNumber), RSA key transport."""

    version = 0
    __slots__ = ("certificate", "transport", "_public", "_prefix")

    def __init__(self, certificate: x509.Certificate, transport: str = KeyTransport.OAEP) -> None:
        public = certificate.public_key()
        check_key_transport(public)
        if transport not in _KEY_TRANSPORT_ALGORITHM:
            raise UnsupportedAlgorithm(f"key transport {transport} unsupported")
        self.certificate, self.transport, self._public = certificate, transport, public
        # RecipientInfos are encoded by hand from DER pieces that asn1crypto or the certificate provide:
        # asn1crypto's own encoder costs milliseconds per RecipientInfo, and a registry has thousands.
        self._prefix = _VERSION_0 + _issuer_and_serial_der(certificate) + _KEY_TRANSPORT_ALGORITHM[transport]

    def wrap(self, cek: bytes) -> bytes:
        """KeyTransRecipientInfo with ``cek`` encrypted to the certificate's RSA key."""
        encrypted = self._public.encrypt(cek, _OAEP_PADDING if self.transport == KeyTransport.OAEP else padding.PKCS1v15())
        return der.encode(0x30, self._prefix + der.encode(0x04, encrypted))


def certificate_recipients(certificates: Sequence[x509.Certificate],
                           transport: str = KeyTransport.OAEP) -> list[CertificateRecipient]:
    """Every certificate as a recipient by key transport."""
    return [CertificateRecipient(c, transport) for c in certificates]


@dataclass(frozen=True)
class Kek:
    """A symmetric key-encryption key and the identifier a KEKRecipientInfo names it by; as a
    :class:`Recipient`, KEKRecipientInfo (version 4) with AES key wrap (RFC 3394)."""

    key_id: bytes
    key: bytes
    version = 4

    def __post_init__(self) -> None:
        if len(self.key) not in _AES_WRAP:
            raise ValueError("a key-encryption key is 16, 24 or 32 bytes (AES key wrap)")

    def wrap(self, cek: bytes) -> bytes:
        """KEKRecipientInfo ([2] IMPLICIT in the RecipientInfo CHOICE) with ``cek`` wrapped under this key."""
        kekid = der.encode(0x30, der.encode(0x04, self.key_id))
        return der.encode(0xA2, _VERSION_4 + kekid + _KEY_WRAP_ALGORITHM[len(self.key)]
                          + der.encode(0x04, aes_key_wrap(self.key, cek)))

    def __repr__(self) -> str:  # never show key material
        return f"Kek(key_id={self.key_id!r})"


def _issuer_and_serial_der(cert: x509.Certificate) -> bytes:
    """IssuerAndSerialNumber with the issuer Name and serial INTEGER exactly as the certificate encodes them."""
    tbs = cert.tbs_certificate_bytes
    _, pos, _ = der.header(tbs, 0)  # into TBSCertificate
    tag, _, end = der.header(tbs, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    serial_end = der.header(tbs, pos)[2]
    issuer_start = der.header(tbs, serial_end)[2]  # after the signature AlgorithmIdentifier
    return der.encode(0x30, tbs[issuer_start:der.header(tbs, issuer_start)[2]] + tbs[pos:serial_end])


def envelope(
    content: bytes,
    recipients: Sequence[Recipient],
    *,
    cipher: str = "aes256_cbc",
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``content`` once and wrap its key for every recipient; DER ContentInfo(EnvelopedData)."""
    if not recipients:
        raise CmsError("an envelope needs at least one recipient")
    if cipher not in _AES_CBC:
        raise UnsupportedAlgorithm(f"content cipher {cipher} unsupported; use one of {', '.join(_AES_CBC)}")
    cek, iv = rng(_AES_CBC[cipher]), rng(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    infos = [r.wrap(cek) for r in recipients]
    encrypted_content_info = asn1_cms.EncryptedContentInfo({
        "content_type": "data",
        "content_encryption_algorithm": {"algorithm": cipher, "parameters": iv},
        "encrypted_content": ciphertext,
    }).dump()
    # Assembled here rather than by asn1crypto, whose SET OF encoding slows down with thousands of
    # recipients (quadratic); each element is still asn1crypto's DER, and the set is in DER order.
    plain = all(r.version == 0 for r in recipients)
    version = asn1_cms.CMSVersion("v0" if plain else "v2").dump()  # RFC 5652 6.1
    enveloped = der.encode(0x30, version + der.set_of(infos) + encrypted_content_info)
    return der.encode(0x30, _ENVELOPED_DATA_OID + der.encode(0xA0, enveloped))


def _unwrap(ktri: asn1_cms.KeyTransRecipientInfo, key) -> bytes:
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
            if hash_name not in HASHES or mgf_hash not in HASHES:
                raise UnsupportedAlgorithm(f"RSA-OAEP with {hash_name}/{mgf_hash} unsupported")
            return key.decrypt(encrypted, padding.OAEP(padding.MGF1(HASHES[mgf_hash]()), HASHES[hash_name](), None))
        if name == "rsaes_pkcs1v15":
            return key.decrypt(encrypted, padding.PKCS1v15())
    except ValueError:
        raise DecryptionFailed("the wrapped content key does not decrypt with our key") from None
    raise UnsupportedAlgorithm(f"key encryption algorithm {name} unsupported")


def _unwrap_kek(kekri: asn1_cms.KEKRecipientInfo, kek: bytes) -> bytes:
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


def _walk_envelope(data: bytes) -> tuple[list[tuple[int, bytes]], bytes] | None:
    """The RecipientInfos (tag, DER) and the EncryptedContentInfo of a definite-length EnvelopedData, found
    without parsing the recipients; None for anything else (BER from a streaming encoder), which asn1crypto
    then parses.  An envelope for 10,000 readers is found in microseconds instead of seconds."""
    try:
        n = len(data)
        tag, start, end = der.read(data, 0, n)
        _, _, oid_end = der.read(data, start, end)
        if tag != 0x30 or end != n or data[start:oid_end] != _ENVELOPED_DATA_OID:
            return None
        tag, start, end = der.read(data, oid_end, n)  # [0] EXPLICIT
        tag2, pos, end2 = der.read(data, start, end)  # EnvelopedData
        if tag != 0xA0 or tag2 != 0x30:
            return None
        tag, _, pos = der.read(data, pos, end2)  # version
        tag, start, end = der.read(data, pos, end2)
        if tag == 0xA0:  # originatorInfo
            tag, start, end = der.read(data, end, end2)
        if tag != 0x31:
            return None
        elements, pos = [], start
        while pos < end:
            tag, _, next_pos = der.read(data, pos, end)
            elements.append((tag, data[pos:next_pos]))
            pos = next_pos
        tag, _, eci_end = der.read(data, end, end2)
        return (elements, data[end:eci_end]) if tag == 0x30 else None
    except (der.NotPlainDer, IndexError):
        return None


def _second_field(element: bytes) -> tuple[int, bytes]:
    """(tag, DER) of the field after the version in a RecipientInfo: ktri's rid, kekri's kekid."""
    _, start, end = der.read(element, 0, len(element))
    _, _, pos = der.read(element, start, end)
    tag, _, field_end = der.read(element, pos, end)
    return tag, element[pos:field_end]


def _kek_id(element: bytes) -> bytes:
    _, kekid = _second_field(element)
    tag, start, end = der.read(kekid, 2 if kekid[1] < 0x80 else 2 + (kekid[1] & 0x7F), len(kekid))
    if tag != 0x04:  # keyIdentifier OCTET STRING
        raise der.NotPlainDer
    return kekid[start:end]


@parsing
def recipients(data: bytes) -> Recipients:
    """Who an envelope is addressed to, without decrypting anything."""
    walked = _walk_envelope(data)
    if walked is not None:
        try:
            infos = walked[0]
            return Recipients(sum(1 for tag, _ in infos if tag == 0x30),
                              tuple(_kek_id(e) for tag, e in infos if tag == 0xA2))
        except (der.NotPlainDer, IndexError):
            pass
    infos = load_content_info(data, "enveloped_data")["content"]["recipient_infos"]
    return Recipients(sum(1 for i in infos if i.name == "ktri"),
                      tuple(i.chosen["kekid"]["key_identifier"].native for i in infos if i.name == "kekri"))


def _find_fast(elements: list[tuple[int, bytes]], credential: KeyHolder | None,
               keks: Mapping[bytes, bytes] | None) -> bytes | None:
    """Our content key from the one RecipientInfo that names us, comparing DER bytes (only that one is parsed)."""
    ours = _issuer_and_serial_der(credential.certificate) if credential is not None else None
    ski = subject_key_id(credential.certificate) if credential is not None else None
    for tag, element in elements:
        try:
            if tag == 0x30 and credential is not None:
                rid_tag, rid = _second_field(element)
                if rid == ours or (rid_tag == 0x80 and ski is not None and rid[2:] == ski and rid[1] == len(ski)):
                    return _unwrap(asn1_cms.RecipientInfo.load(element).chosen, credential.key)
            elif tag == 0xA2 and keks and (kek := keks.get(_kek_id(element))):
                return _unwrap_kek(asn1_cms.RecipientInfo.load(element).chosen, kek)
        except (der.NotPlainDer, IndexError):
            continue
    return None


@parsing
def open_envelope(data: bytes, credential: KeyHolder | None = None, *, keks: Mapping[bytes, bytes] | None = None) -> bytes:
    """Decrypt an EnvelopedData addressed (among others) to ``credential``'s certificate or to one of
    the key-encryption keys ``keks`` (key identifier -> key)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_CMS_BYTES:
        load_content_info(data, "enveloped_data")  # raises the specific error
    walked = _walk_envelope(bytes(data))
    cek = _find_fast(walked[0], credential, keks) if walked is not None else None
    if cek is not None:
        eci = asn1_cms.EncryptedContentInfo.load(walked[1], strict=True)
    elif walked is not None and len(walked[0]) > 64:
        raise NotARecipient("the envelope has no RecipientInfo for our certificate or keys")
    else:  # BER, or few recipients: the full parse, which also matches names re-encoded by other tools
        enveloped = load_content_info(data, "enveloped_data")["content"]
        for info in enveloped["recipient_infos"]:
            if info.name == "ktri" and credential is not None and names(info.chosen["rid"], credential.certificate):
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
