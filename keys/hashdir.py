"""OpenSSL hashed certificate directories (``-CApath``, ``/etc/grid-security/certificates``).

A CA certificate lives at ``<hash>.<n>`` and its CRL at ``<hash>.r<n>``,
where ``<hash>`` is OpenSSL's subject-name hash (``X509_NAME_hash_ex``): the
first four bytes, little-endian, of SHA-1 over the *canonical* encoding of the
name.  Computing it here (rather than running ``openssl rehash``) lets us
write and read such directories without a subprocess; the tests check every
hash against the openssl CLI.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from zmqsec.crypto import der

from .pemfiles import cert_pem, write_public

# ASN.1 string types OpenSSL canonicalises (ASN1_MASK_CANON).
_CANON_TAGS = {
    19,  # PrintableString
    20,  # T61String
    22,  # IA5String
    26,  # VisibleString
    28,  # UniversalString
    30,  # BMPString
    12,  # UTF8String
}
_WHITESPACE = b" \t\n\v\f\r"
HASHED_CERT = re.compile(r"^([0-9a-f]{8})\.(\d+)$")
HASHED_CRL = re.compile(r"^([0-9a-f]{8})\.r(\d+)$")


def _canonical_value(value: core.Asn1Value) -> bytes:
    """DER of the value as OpenSSL canonicalises it (lower-case, folded spaces, UTF8String)."""
    if isinstance(value, core.Choice):  # DirectoryString and friends
        value = value.chosen
    if value.tag not in _CANON_TAGS or value.class_ != 0:
        return value.dump()
    raw = value.native.encode("utf-8")
    raw = raw.strip(_WHITESPACE)
    out = bytearray()
    in_space = False
    for byte in raw:
        if byte in _WHITESPACE:
            if not in_space:
                out.append(0x20)
            in_space = True
            continue
        in_space = False
        out.append(byte + 32 if 0x41 <= byte <= 0x5A else byte)
    return der.encode(0x0C, bytes(out))


def name_hash(name: x509.Name) -> str:
    """OpenSSL's subject hash of ``name`` as the 8 hex digits used in file names."""
    return _name_hash(name.public_bytes())


@functools.lru_cache(maxsize=4096)  # a registry of thousands of readers has a handful of issuers
def _name_hash(name_der: bytes) -> str:
    parsed = asn1_x509.Name.load(name_der)
    canon = bytearray()
    for rdn in parsed.chosen:
        avas = sorted(
            der.encode(0x30, ava["type"].dump() + _canonical_value(ava["value"])) for ava in rdn
        )
        canon += der.encode(0x31, b"".join(avas))
    digest = hashlib.sha1(bytes(canon)).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _free_slot(directory: Path, hash_: str, prefix: str, payload: bytes) -> Path:
    """The ``<hash>.<prefix><n>`` path holding ``payload`` already, or the first free one."""
    n = 0
    while True:
        candidate = directory / f"{hash_}.{prefix}{n}"
        if not candidate.exists():
            return candidate
        try:
            if candidate.read_bytes() == payload:
                return candidate
        except OSError:
            pass
        n += 1


def install_ca_certificate(directory: Path, cert: x509.Certificate) -> Path:
    """Place ``cert`` in ``directory`` as ``<hash>.<n>`` (idempotent)."""
    payload = cert_pem(cert)
    path = _free_slot(directory, name_hash(cert.subject), "", payload)
    write_public(path, payload)
    return path


def install_crl(directory: Path, crl: x509.CertificateRevocationList, replace: bool = True) -> Path:
    """Place ``crl`` in ``directory`` as ``<hash>.r<n>``.

    With ``replace`` an existing CRL of the same issuer (signed by the same
    key, so from the same CA) is overwritten, as fetch-crl does.
    """
    from cryptography.hazmat.primitives import serialization

    payload = crl.public_bytes(serialization.Encoding.PEM)
    hash_ = name_hash(crl.issuer)
    if replace:
        path = directory / f"{hash_}.r0"
    else:
        path = _free_slot(directory, hash_, "r", payload)
    write_public(path, payload)
    return path


def rehash(directory: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Like ``openssl rehash``: link every ``*.pem``/``*.crt``/``*.crl`` to its hashed name.

    Returns the (link, target) pairs made.  Existing hashed links are rebuilt.
    """
    from .errors import KeyFileError
    from .pemfiles import load_certificates, load_crl

    directory = Path(directory)
    for entry in directory.iterdir():
        if (HASHED_CERT.match(entry.name) or HASHED_CRL.match(entry.name)) and entry.is_symlink():
            entry.unlink()
    made = []
    for entry in sorted(directory.iterdir()):
        if entry.suffix not in (".pem", ".crt", ".crl", ".cer") or entry.is_symlink():
            continue
        try:
            if entry.suffix == ".crl":
                hash_, prefix = name_hash(load_crl(entry).issuer), "r"
            else:
                hash_, prefix = name_hash(load_certificates(entry)[0].subject), ""
        except KeyFileError:
            continue
        n = 0
        while (directory / f"{hash_}.{prefix}{n}").exists():
            n += 1
        link = directory / f"{hash_}.{prefix}{n}"
        link.symlink_to(entry.name)
        made.append((link, entry))
    return made
