"""CMS (RFC 5652) in common: errors, identifiers, and strict loading of ContentInfo.

The one CMS implementation is three modules: this one, :mod:`.enveloped`
(multi-recipient EnvelopedData) and :mod:`.signed` (SignedData).  It serves the
stream (key announcements) and the STOMP bridge (S/MIME), and the tests hold
it to the openssl CLI in both directions.  Pure: bytes in, bytes out, no files,
no sockets.  Structures are built and parsed with asn1crypto; the primitives
are pyca/cryptography's.

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

import functools
from typing import Protocol

from asn1crypto import cms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.errors import RejectReason, ZmqsecError

MAX_CMS_BYTES = 64 * 1024 * 1024


class KeyHolder(Protocol):
    """A certificate with its private key (``zmqsec.keys.pemfiles.Credential`` is one)."""

    certificate: x509.Certificate
    key: object
    chain: tuple[x509.Certificate, ...]


class CmsError(ZmqsecError):
    """A CMS structure was refused; ``reason`` is its :class:`RejectReason`."""

    reason = RejectReason.CMS_ERROR


class MalformedCms(CmsError):
    """The bytes are not the expected DER CMS structure."""

    reason = RejectReason.MALFORMED_CMS


class UnsupportedAlgorithm(CmsError):
    """A well-formed structure uses an algorithm or key type we do not implement."""

    reason = RejectReason.UNSUPPORTED_ALGORITHM


class NotARecipient(CmsError):
    """No RecipientInfo in the envelope is addressed to our certificate or keys."""

    reason = RejectReason.NOT_A_RECIPIENT


class DecryptionFailed(CmsError):
    """The envelope names us, but its key or content does not decrypt."""

    reason = RejectReason.DECRYPTION_FAILED


class SignatureInvalid(CmsError):
    """The signature does not verify."""

    reason = RejectReason.BAD_SIGNATURE


class AttributeMismatch(CmsError):
    """A signed attribute the verifier expects is missing or holds another value (the signature was carried
    under claims it does not sign)."""

    reason = RejectReason.HEADER_MISMATCH


class SignerNotEmbedded(CmsError):
    """The SignedData does not carry the certificate of its signer (nothing to verify the signature with)."""

    reason = RejectReason.NO_SIGNER_CERTIFICATE


def asn1_cert(cert: x509.Certificate) -> ax509.Certificate:
    """The certificate as asn1crypto sees it."""
    return ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    """The IssuerAndSerialNumber that names ``cert`` in a RecipientInfo or SignerInfo."""
    parsed = asn1_cert(cert)
    return cms.IssuerAndSerialNumber({"issuer": parsed.issuer, "serial_number": parsed.serial_number})


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    """The certificate's subjectKeyIdentifier, if it has one."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def names(identifier, cert: x509.Certificate) -> bool:
    """Does a RecipientIdentifier / SignerIdentifier name ``cert``?"""
    if identifier.name == "issuer_and_serial_number":
        ias = identifier.chosen
        return (ias["serial_number"].native == cert.serial_number
                and ias["issuer"].dump() == asn1_cert(cert).issuer.dump())
    if identifier.name == "subject_key_identifier":
        return identifier.chosen.native == subject_key_id(cert)
    return False


def load_content_info(der: bytes, expected: str) -> cms.ContentInfo:
    """Parse a whole DER ContentInfo of type ``expected``, strictly and within the size limit."""
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise MalformedCms("CMS input must be bytes")
    if len(der) > MAX_CMS_BYTES:
        raise MalformedCms(f"CMS structure of {len(der)} bytes exceeds the {MAX_CMS_BYTES}-byte limit")
    try:
        info = cms.ContentInfo.load(bytes(der), strict=True)
        content_type = info["content_type"].native
        if content_type != expected:
            raise MalformedCms(f"expected CMS {expected}, got {content_type}")
        # Parse every field now, inside the try, without building Python values of them (``.native`` costs
        # five times as much: 3 ms for a signed 1 KiB message, more than its signature check).
        info["content"]._parse_children(recurse=True)
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise MalformedCms(f"not a DER CMS {expected} ({exc.__class__.__name__})") from None
    return info


def parsing(func):
    """asn1crypto parses lazily, so a malformed field can surface at any access:
    every library exception inside a decoder becomes :class:`MalformedCms`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CmsError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, x509.DuplicateExtension,
                x509.InvalidVersion) as exc:
            raise MalformedCms(f"malformed CMS structure ({exc.__class__.__name__})") from None

    return wrapper
