"""Distinguished names in the legacy slash form grid tools use.

APEL SSM, VOMS and ``/etc/grid-security`` files write DNs as
``/C=UK/O=eScience/OU=CLRC/L=RAL/CN=host.example.org``: the RDNs in
certificate order, OpenSSL short names, multi-valued RDNs joined by ``+``,
a ``/`` inside a value written ``\\/`` (what ``openssl x509 -subject
-nameopt compat`` prints).  This module converts both ways and reads SSM-style DN allow-lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from zmqsec.files import atomic_write

from .errors import RegistryError

# OpenSSL's short names for the attributes grid DNs use (obj_dat.h).
_SHORT_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.STREET_ADDRESS: "street",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.INITIALS: "initials",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
}
_BY_SHORT_NAME = {v.lower(): k for k, v in _SHORT_NAMES.items()}
_BY_SHORT_NAME["e"] = NameOID.EMAIL_ADDRESS
_BY_SHORT_NAME["email"] = NameOID.EMAIL_ADDRESS


def _escape(value: str) -> str:
    # As OpenSSL 3's -nameopt compat: '/' inside a value becomes '\/', bytes
    # outside printable ASCII become \xHH.
    out = []
    for byte in value.encode("utf-8"):
        if byte == 0x2F:
            out.append("\\/")
        else:
            out.append(chr(byte) if 0x20 <= byte <= 0x7E else f"\\x{byte:02X}")
    return "".join(out)


def slash_dn(name: x509.Name) -> str:
    """Format ``name`` as ``/C=../O=../CN=..``, as grid tools compare DNs."""
    parts = []
    for rdn in name.rdns:
        avas = []
        for attr in rdn:
            short = _SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            avas.append(f"{short}={_escape(value)}")
        parts.append("+".join(avas))
    return "".join("/" + p for p in parts)


def parse_slash_dn(text: str) -> x509.Name:
    """Parse ``/C=UK/O=Example/CN=name`` into a :class:`x509.Name`.

    A ``/`` inside a value may be written ``\\/``.  Raises :class:`ValueError`
    with the offending component on malformed input.
    """
    text = text.strip()
    if not text.startswith("/"):
        raise ValueError(f"DN {text!r} must start with '/' (e.g. /O=Example/CN=name)")
    components: list[str] = []
    current = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == "/":
            current.append("/")
            i += 2
            continue
        if ch == "/":
            components.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    components.append("".join(current))
    rdns = []
    for component in components:
        attrs = []
        for ava in component.split("+"):
            key, sep, value = ava.partition("=")
            oid = _BY_SHORT_NAME.get(key.strip().lower())
            if not sep or oid is None or not value:
                raise ValueError(f"DN component {ava!r} is not ATTR=value with a known attribute")
            attrs.append(x509.NameAttribute(oid, value))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


@dataclass(frozen=True)
class DnAllowList:
    """A set of DNs in slash form, read from an SSM-style valid-DN file.

    One DN per line; blank lines and lines starting with ``#`` are ignored.
    Comparison is exact, as SSM's is.
    """

    dns: frozenset[str]
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DnAllowList":
        """Read a valid-DN file; raises :class:`RegistryError` naming the file (and line) if it is missing or malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RegistryError(f"{path}: DN allow-list not found; create it with one /C=../CN=.. DN per line") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: cannot read DN allow-list ({exc.__class__.__name__}: {exc})") from None
        dns = set()
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("/") or "=" not in line:
                raise RegistryError(f"{path}:{lineno}: {line!r} is not a DN in /C=../O=../CN=.. form")
            dns.add(line)
        return cls(frozenset(dns), path)

    @classmethod
    def combine(cls, dns=(), path: str | os.PathLike | None = None) -> "DnAllowList":
        """DNs given one by one plus those of an optional file."""
        listed = cls.load(path) if path else cls(frozenset())
        for dn in dns:
            if not dn.startswith("/") or "=" not in dn:
                raise RegistryError(f"{dn!r} is not a DN in /C=../O=../CN=.. form")
        return cls(listed.dns | frozenset(dns), listed.path)

    def __contains__(self, dn: object) -> bool:
        return dn in self.dns

    def with_dn(self, dn: str) -> "DnAllowList":
        """A new list with ``dn`` added, saved to the same file; this one is unchanged."""
        return DnAllowList(self.dns | {dn}, self.path)

    def without_dn(self, dn: str) -> "DnAllowList":
        """A new list without ``dn``, saved to the same file; this one is unchanged."""
        return DnAllowList(self.dns - {dn}, self.path)

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write the list atomically (sorted), to ``path`` or where it was read."""
        target = Path(path or self.path or "")
        if not target.name:
            raise RegistryError("DN allow-list has no file to save to")
        atomic_write(target, "".join(dn + "\n" for dn in sorted(self.dns)).encode("utf-8"))
