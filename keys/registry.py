"""The reader registry: which certificates may read a stream.

A registry is a directory of PEM certificates, one reader per file, optionally
narrowed by an SSM-style DN allow-list.  Loading it gives an immutable
:class:`ReaderSet`; a publisher compares successive sets and rekeys when one
changes, so editing the directory (``zmqsec keys readers add|remove``) is
how an operator grants and revokes access on a live stream.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .dn import DnAllowList, slash_dn
from .errors import CertificateRejected, KeyFileError, RegistryError
from .pemfiles import cert_pem, load_certificate, write_public
from .trust import TrustStore, Usage


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lower-case hex (what ``openssl x509 -fingerprint -sha256`` shows)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Reader:
    """One authorized reader certificate."""

    certificate: x509.Certificate
    path: Path | None = None

    @property
    def dn(self) -> str:
        return slash_dn(self.certificate.subject)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


@dataclass(frozen=True)
class Refusal:
    """A registry entry that is not (or no longer) authorized, and why."""

    path: Path
    reason: str
    message: str


@dataclass(frozen=True)
class ReaderSet:
    """An immutable snapshot of the authorized readers, keyed by fingerprint."""

    readers: tuple[Reader, ...] = ()
    refused: tuple[Refusal, ...] = ()

    def __len__(self) -> int:
        return len(self.readers)

    def __iter__(self):
        return iter(self.readers)

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(r.fingerprint for r in self.readers)

    def same_readers(self, other: "ReaderSet") -> bool:
        return self.fingerprints == other.fingerprints


class ReaderRegistry:
    """A directory of reader certificates, plus an optional DN allow-list file."""

    def __init__(self, directory: str | os.PathLike, allowed_dns: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory)
        self.allowed_dns_path = Path(allowed_dns) if allowed_dns else None

    def _allow_list(self) -> DnAllowList | None:
        if self.allowed_dns_path is None:
            return None
        if not self.allowed_dns_path.exists():
            return DnAllowList(frozenset(), self.allowed_dns_path)
        return DnAllowList.load(self.allowed_dns_path)

    def _entries(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix == ".pem" and p.is_file())
        except FileNotFoundError:
            raise RegistryError(f"{self.directory}: reader registry not found; create it with `zmqsec keys readers add`") from None
        except NotADirectoryError:
            raise RegistryError(f"{self.directory}: reader registry is not a directory") from None
        except PermissionError:
            raise RegistryError(f"{self.directory}: permission denied listing reader registry") from None

    def load(
        self,
        trust: TrustStore | None = None,
        *,
        at: dt.datetime | None = None,
        **validate_options,
    ) -> ReaderSet:
        """Snapshot the authorized readers.

        Unparseable files, DNs missing from the allow-list and (given ``trust``)
        certificates that fail validation for encryption are refused, each with
        its reason, rather than aborting: one bad file must not stop a stream.
        """
        allow = self._allow_list()
        readers: list[Reader] = []
        refused: list[Refusal] = []
        seen: set[str] = set()
        for path in self._entries():
            try:
                cert = load_certificate(path)
            except KeyFileError as exc:
                refused.append(Refusal(path, "unreadable", str(exc)))
                continue
            reader = Reader(cert, path)
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                refused.append(Refusal(path, "unsupported-key", f"{reader.dn}: reader keys must be RSA (key transport)"))
                continue
            if reader.fingerprint in seen:
                continue
            if allow is not None and reader.dn not in allow:
                refused.append(Refusal(path, "dn-not-allowed", f"{reader.dn}: not in {allow.path}"))
                continue
            if trust is not None:
                try:
                    trust.validate(cert, usage=Usage.ENCRYPT, at=at, **validate_options)
                except CertificateRejected as exc:
                    refused.append(Refusal(path, exc.reason, str(exc)))
                    continue
            seen.add(reader.fingerprint)
            readers.append(reader)
        return ReaderSet(tuple(readers), tuple(refused))

    def add(self, cert: x509.Certificate, trust: TrustStore | None = None, **validate_options) -> Reader:
        """Add a reader certificate (validated first when ``trust`` is given)."""
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise RegistryError(f"{slash_dn(cert.subject)}: reader keys must be RSA (the stream wraps keys by RSA key transport)")
        if trust is not None:
            trust.validate(cert, usage=Usage.ENCRYPT, **validate_options)
        self.directory.mkdir(parents=True, exist_ok=True)
        reader = Reader(cert)
        for path in self._entries():
            try:
                if fingerprint(load_certificate(path)) == reader.fingerprint:
                    raise RegistryError(f"{reader.dn}: already registered as {path}")
            except KeyFileError:
                continue
        path = self.directory / f"{reader.fingerprint[:16]}.pem"
        write_public(path, cert_pem(cert))
        allow = self._allow_list()
        if allow is not None and reader.dn not in allow:
            allow.with_dn(reader.dn).save()
        return Reader(cert, path)

    def remove(self, selector: str) -> list[Reader]:
        """Remove the readers matching a DN, a fingerprint (prefix of 8+ hex digits) or a file name.

        Removing by DN also takes the DN off the allow-list.
        """
        selector = selector.strip()
        fp = selector.lower().replace(":", "")
        removed = []
        for path in self._entries():
            try:
                reader = Reader(load_certificate(path), path)
            except KeyFileError:
                if path.name == selector or str(path) == selector:
                    path.unlink()
                continue
            if (reader.dn == selector
                    or (len(fp) >= 8 and all(c in "0123456789abcdef" for c in fp) and reader.fingerprint.startswith(fp))
                    or path.name == selector or str(path) == selector):
                path.unlink()
                removed.append(reader)
        allow = self._allow_list()
        dn_listed = allow is not None and selector in allow
        if dn_listed:
            allow.without_dn(selector).save()
        if not removed and not dn_listed:
            raise RegistryError(f"{selector}: no reader in {self.directory} matches (give a DN, a fingerprint or a file name)")
        return removed
