"""S/MIME (RFC 8551) as the EMI accounting protocol uses it, over the one CMS module.

Outgoing: sign first (``multipart/signed``, detached ``application/pkcs7-signature``,
``micalg`` sha-1/sha-2), then optionally encrypt (``application/pkcs7-mime;
smime-type=enveloped-data``, AES).  The shape is what APEL SSM's receiver
needs: the signed part starts with its own MIME headers and a blank line (as
``openssl smime -sign -text`` makes it), its transfer encoding is 7bit or
quoted-printable (never base64), only the signer's certificate is embedded,
and the whole body is ASCII with CRLF line ends.

Incoming: strict parsing of what SSM's sender and ``openssl smime``/``openssl
cms`` produce -- decrypt if enveloped, then verify a ``multipart/signed`` or an
opaque ``smime-type=signed-data`` message, and return the inner content with
the certificate that really made the signature.  Whether that certificate is
acceptable is the trust layer's decision, made by the caller.
"""

from __future__ import annotations

from zmqsec.errors import RejectReason

import base64
import binascii
import codecs
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from zmqsec.keys.pemfiles import Credential

from zmqsec.crypto import cms, enveloped, signed

MICALG = {"sha1": "sha-1", "sha224": "sha-224", "sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}
CIPHERS = {"aes128": "aes128_cbc", "aes192": "aes192_cbc", "aes256": "aes256_cbc"}
MAX_MESSAGE = 64 * 1024 * 1024
MAX_HEADER = 64 * 1024
_MAX_LINE = 998  # RFC 5322 line limit for 7bit


class SmimeError(cms.CmsError):
    """An S/MIME message is malformed or not of a shape we accept; the message says which part."""

    reason = RejectReason.MALFORMED_SMIME


class NotSigned(SmimeError):
    """The message carries no S/MIME signature (EMI requires one)."""

    reason = RejectReason.UNSIGNED


class MessageTooLarge(SmimeError):
    """An incoming message exceeds :data:`MAX_MESSAGE` bytes and is refused unparsed."""

    reason = RejectReason.OVERSIZED


@dataclass(frozen=True)
class Opened:
    """A verified message: the content, who signed it, and whether it came encrypted."""

    content: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    digest: str
    encrypted: bool


# -- canonical text -------------------------------------------------------------


def canonical(data: bytes) -> bytes:
    """CRLF line ends, as S/MIME signs text (OpenSSL's SMIME_crlf_copy: CRs before a LF are dropped)."""
    lines = data.split(b"\n")
    out = [line.rstrip(b"\r") for line in lines[:-1]]
    return b"".join(line + b"\r\n" for line in out) + lines[-1]


def _base64_lines(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"".join(text[i:i + 64] + b"\r\n" for i in range(0, len(text), 64))


def _is_7bit_text(content: bytes) -> bool:
    if b"\r" in content or any(len(line) > _MAX_LINE for line in content.split(b"\n")):
        return False
    return not content.translate(None, _PRINTABLE_7BIT)  # every byte printable ASCII, tab or newline


_PRINTABLE_7BIT = bytes(range(32, 127)) + b"\t\n"


# APEL SSM's receiver takes any message containing these to be encrypted, wherever they are: a signed-only
# body must not carry them in clear (quoted-printable escapes their first letter; =61 decodes back to 'a').
_ENCRYPTED_MARKS = (b"application/pkcs7-mime", b"application/x-pkcs7-mime")


def inner_entity(content: bytes) -> bytes:
    """The signed MIME entity: headers, blank line, body (7bit if it can be, else quoted-printable)."""
    marked = any(mark in content for mark in _ENCRYPTED_MARKS)
    if _is_7bit_text(content) and not marked:
        return b"Content-Type: text/plain\r\n\r\n" + canonical(content)
    # Line breaks stay readable unless the content has carriage returns of its own, which must survive.
    encoded = binascii.b2a_qp(content, quotetabs=True, istext=b"\r" not in content)
    for mark in _ENCRYPTED_MARKS:
        encoded = encoded.replace(mark, b"=61" + mark[1:])
    return (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + canonical(encoded))


# -- outgoing -------------------------------------------------------------------------


def sign(content: bytes, credential: Credential, *, digest: str = "sha256", boundary: str | None = None, clock=None) -> bytes:
    """An EMI ``multipart/signed`` message around ``content``."""
    if digest not in MICALG:
        raise cms.UnsupportedAlgorithm(f"micalg {digest} unsupported; use one of {', '.join(MICALG)}")
    entity = inner_entity(content)
    signer_only = Credential(credential.certificate, credential.key)  # embed only the signer's certificate
    signature = signed.sign(entity, signer_only, digest=digest, detached=True, clock=clock)
    boundary = boundary or "----" + os.urandom(16).hex().upper()
    head = (f'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; '
            f'micalg="{MICALG[digest]}"; boundary="{boundary}"\r\n\r\nThis is an S/MIME signed message\r\n\r\n').encode()
    return (head + f"--{boundary}\r\n".encode() + entity + f"\r\n--{boundary}\r\n".encode()
            + b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
              b"Content-Transfer-Encoding: base64\r\n"
              b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
            + _base64_lines(signature) + f"\r\n--{boundary}--\r\n".encode())


def encrypt(message: bytes, recipients: Sequence[x509.Certificate], *, cipher: str = "aes256",
            transport: str = enveloped.KeyTransport.PKCS1V15) -> bytes:
    """Wrap a (signed) MIME message in ``application/pkcs7-mime; smime-type=enveloped-data``.

    RSA PKCS#1 v1.5 key transport by default: ``openssl smime -decrypt``, which
    APEL SSM runs, reads no other.
    """
    if cipher not in CIPHERS:
        raise cms.UnsupportedAlgorithm(f"cipher {cipher} unsupported; use one of {', '.join(CIPHERS)}")
    der = enveloped.envelope(canonical(message), enveloped.certificate_recipients(recipients, transport),
                             cipher=CIPHERS[cipher])
    return (b"MIME-Version: 1.0\r\n"
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
            b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _base64_lines(der))


# -- incoming -------------------------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _split_entity(data: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (lower-cased names, unfolded) and the raw body of a MIME entity."""
    match = _HEADER_END.search(data, 0, MAX_HEADER)
    if match is None:
        if data.startswith((b"\r\n", b"\n")):
            return {}, data.lstrip(b"\r\n")
        raise SmimeError("no blank line ends the MIME headers")
    raw_headers, body = data[:match.start()], data[match.end():]
    headers: dict[str, str] = {}
    name = None
    try:
        text = raw_headers.decode("ascii")
    except UnicodeDecodeError:
        raise SmimeError("MIME headers are not ASCII") from None
    for line in re.split(r"\r?\n", text):
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or " " in key.strip():
            raise SmimeError(f"malformed MIME header line {line[:60]!r}")
        name = key.strip().lower()
        headers[name] = value.strip()
    return headers, body


def _content_type(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    value = headers.get("content-type", "text/plain")
    parts = value.split(";")
    params = {}
    for param in parts[1:]:
        key, sep, val = param.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return parts[0].strip().lower(), params


def _decode_base64(body: bytes) -> bytes:
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except (binascii.Error, ValueError):
        raise SmimeError("base64 part does not decode") from None


def _entity_content(entity: bytes) -> bytes:
    """The body of the signed entity, transfer-decoded, with LF line ends for text.

    ``openssl cms -sign`` without ``-text`` signs bare content with no MIME
    headers, and an APEL record's own lines look like headers; so the entity
    has headers only if a blank line ends a block that holds a Content-* header.
    """
    bare = entity.replace(b"\r\n", b"\n")
    try:
        headers, body = _split_entity(entity)
    except SmimeError:
        return bare
    if not any(name.startswith("content-") or name == "mime-version" for name in headers):
        return bare
    encoding = headers.get("content-transfer-encoding", "7bit").lower()
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body.replace(b"\r\n", b"\n"))
    if encoding == "base64":
        return _decode_base64(body)
    if encoding not in ("7bit", "8bit", "binary"):
        raise SmimeError(f"unknown Content-Transfer-Encoding {encoding!r}")
    return body.replace(b"\r\n", b"\n")


def _multipart_parts(body: bytes, boundary: str) -> list[bytes]:
    """Raw parts of a multipart body; the CRLF before each delimiter belongs to the delimiter (RFC 2046)."""
    if not boundary or len(boundary) > 200:
        raise SmimeError("multipart/signed without a usable boundary")
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)")
    parts, start, closed = [], None, False
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start:match.start()])
        if match.group(1):
            closed = True
            break
        start = match.end()
    if not closed or len(parts) != 2:
        raise SmimeError(f"multipart/signed must have exactly two parts and a closing boundary (found {len(parts)})")
    return parts


def open_message(raw: bytes, credential: Credential | None = None) -> Opened:
    """Decrypt (if enveloped and ``credential`` is ours) and verify an S/MIME message."""
    if len(raw) > MAX_MESSAGE:
        raise MessageTooLarge(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    return _open(raw, credential, encrypted=False)


def _text(head: bytes) -> bool:
    """Is this start of a message UTF-8 text (a character cut at its end allowed), with no control characters
    but tabs and line ends?"""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)


def _open(raw: bytes, credential: Credential | None, encrypted: bool) -> Opened:
    try:
        headers, body = _split_entity(raw)
    except SmimeError:
        # Text with no MIME headers at all (an APEL record sent as it is): unsigned, not malformed S/MIME.
        head = raw[:MAX_HEADER]
        if encrypted or re.search(rb"(?im)^content-type\s*:", head) or not _text(head):
            raise
        raise NotSigned("message has no MIME headers: not S/MIME signed (multipart/signed or pkcs7-mime)") from None
    ctype, params = _content_type(headers)
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        smime_type = params.get("smime-type", "enveloped-data" if not encrypted else "signed-data")
        der = _decode_base64(body) if headers.get("content-transfer-encoding", "base64").lower() == "base64" else body
        if smime_type == "enveloped-data":
            if encrypted:
                raise SmimeError("nested encryption is not accepted")
            if credential is None:
                raise SmimeError("encrypted message but no key to decrypt it with")
            return _open(enveloped.open_envelope(der, credential), credential, encrypted=True)
        if smime_type == "signed-data":
            verified = signed.verify_signature(der)
            return Opened(_entity_content(verified.content), verified.signer, verified.certificates, verified.digest, encrypted)
        raise SmimeError(f"unsupported smime-type {smime_type!r}")
    if ctype == "multipart/signed":
        protocol = params.get("protocol", "").lower()
        if protocol not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            raise SmimeError(f"multipart/signed with protocol {protocol!r}, not application/pkcs7-signature")
        content, signature_part = _multipart_parts(body, params.get("boundary", ""))
        sig_headers, sig_body = _split_entity(signature_part)
        sig_type, _ = _content_type(sig_headers)
        if sig_type not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            raise SmimeError(f"second part is {sig_type}, not application/pkcs7-signature")
        verified = signed.verify_signature(_decode_base64(sig_body), canonical(content))
        return Opened(_entity_content(content), verified.signer, verified.certificates, verified.digest, encrypted)
    raise NotSigned(f"message is {ctype or 'not MIME'}, not S/MIME signed (multipart/signed or pkcs7-mime)")
