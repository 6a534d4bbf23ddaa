"""The reader registry: which certificates may read a stream.

A registry is a directory of PEM certificates, one reader per file, optionally
narrowed by an SSM-style DN allow-list.  Loading it gives an immutable
:class:`ReaderSet`; a publisher compares successive sets and rekeys when one
changes, so editing the directory (``zmqsec keys readers add|remove``) is
how an operator grants and revokes access on a live stream.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.crypto.cms import UnsupportedAlgorithm
from zmqsec.crypto.enveloped import check_key_transport
from zmqsec.errors import RejectReason

from .dn import DnAllowList, slash_dn
from .errors import CertificateRejected, KeyFileError, RegistryError
from .hashdir import name_hash
from .pemfiles import cert_pem, load_certificate, write_public
from .trust import TrustStore, Usage


def stat_key(path: str | os.PathLike, dir_fd: int | None = None) -> tuple:
    """What says a certificate file is unchanged since it was parsed (ctime: no copy can preserve it); ``path``
    relative to ``dir_fd`` when given (no path to join per file)."""
    st = os.stat(path, dir_fd=dir_fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        """The subject DN in OpenSSL slash form, as DN allow-lists write it."""
        return slash_dn(self.certificate.subject)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the certificate, lower-case hex."""
        return fingerprint(self.certificate)


@dataclass(frozen=True)
class Refusal:
    """A registry entry that is not (or no longer) authorized, and why."""

    path: Path
    reason: RejectReason
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

    @functools.cached_property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of the authorized readers (refusals excluded)."""
        return frozenset(r.fingerprint for r in self.readers)

    def same_readers(self, other: "ReaderSet") -> bool:
        """True if both sets authorize the same certificates, so no rekey is needed; refusals and order are ignored."""
        return self.fingerprints == other.fingerprints


@dataclass
class LoadCache:
    """What :meth:`ReaderRegistry.load` learned, for the next load of a large registry.

    Certificates are re-parsed only when their file changes; a reader accepted by
    a trust store is not validated again by the same store (same object) until its
    certificate, a CA or a CRL of the store expires.  A new trust store with the
    same CA certificates (a new CRL arrived) validates again only the readers
    whose serial number a changed CRL of their issuer lists (every reader of that
    issuer where the CRL is not current and signed by it; everyone where the
    issuer has issued a CA of the store); other CA certificates or other
    validation options validate everything again.  Refusals are always
    re-examined.
    """

    parsed: dict = field(default_factory=dict)  # file name -> (stat key, Reader)
    accepted: dict = field(default_factory=dict)  # fingerprint -> accepted until (UTC)
    transport_ok: set = field(default_factory=set)  # fingerprints whose key can receive a key by transport
    trust: TrustStore | None = None
    options: dict = field(default_factory=dict)  # the validation options the verdicts were given under


def _verdicts_kept(cache: LoadCache, trust: TrustStore | None, now: dt.datetime) -> dict:
    """The accepted verdicts of ``cache.trust`` that ``trust`` would give again (TrustStore.crl_changes_since),
    valid until the certificate or something of ``trust`` expires."""
    if cache.trust is None or trust is None:
        return {}
    changes = trust.crl_changes_since(cache.trust, now)
    if changes is None:
        return {}
    kept, store_until = {}, trust.valid_until
    every = any(serials is None for serials in changes.values())
    listed = frozenset().union(*(serials for serials in changes.values() if serials is not None))
    for _, reader in cache.parsed.values():
        cert = reader.certificate
        if now >= cache.accepted.get(reader.fingerprint, now):
            continue  # not accepted, or the verdict has expired: judged again
        if every or cert.serial_number in listed:  # only then is the issuer worth its hash
            serials = changes.get(name_hash(cert.issuer), frozenset())
            if serials is None or cert.serial_number in serials:
                continue
        kept[reader.fingerprint] = min(cert.not_valid_after_utc, store_until)
    return kept


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
        return [self.directory / name for name in self._names()]

    def _names(self) -> list[str]:
        return [name for name, _ in self._listing()]

    def _listing(self) -> list[tuple[str, int]]:
        """(file name, inode number) of each certificate file, by name; the listing alone tells both (no stat)."""
        try:
            with os.scandir(self.directory) as listing:  # no stat per entry: registries hold thousands
                return sorted((e.name, e.inode()) for e in listing if e.name.endswith(".pem") and e.is_file())
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
        cache: LoadCache | None = None,
        prejudge: Callable | None = None,
        restat: bool = True,
        **validate_options,
    ) -> ReaderSet:
        """Snapshot the authorized readers.

        Unparseable files, DNs missing from the allow-list and (given ``trust``)
        certificates that fail validation for encryption are refused, each with
        its reason, rather than aborting: one bad file must not stop a stream.
        ``prejudge(registry, names, cache, trust, at, now, options)`` may fill
        ``cache`` first (zmqsec.drivers.coldload: in worker processes).  With a
        ``cache`` and ``restat`` False, a file whose name and inode the cache
        knows is taken as unchanged without a stat (a file written by rename has
        a new inode; one rewritten in place is seen at the next load with
        ``restat``).
        """
        allow = self._allow_list()
        readers: list[Reader] = []
        refused: list[Refusal] = []
        seen: set[str] = set()
        now = at or dt.datetime.now(dt.timezone.utc)
        if cache is not None and cache.options != validate_options:
            cache.accepted, cache.trust, cache.options = {}, trust, dict(validate_options)
        if cache is not None and cache.trust is not trust:
            cache.accepted, cache.trust = _verdicts_kept(cache, trust, now), trust
        listing = self._listing()
        names = [name for name, _ in listing]
        if prejudge is not None and cache is not None and trust is not None:
            prejudge(self, names, cache, trust, at, now, validate_options)
        transport_ok = cache.transport_ok if cache is not None else set()
        directory_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY) if cache is not None else None
        try:
            parsed = [self._parsed(name, cache, directory_fd, None if restat else inode) for name, inode in listing]
        finally:
            if directory_fd is not None:
                os.close(directory_fd)
        for name, reader in zip(names, parsed):
            if isinstance(reader, Exception):
                refused.append(Refusal(self.directory / name, RejectReason.UNREADABLE, str(reader)))
                continue
            cert, path = reader.certificate, reader.path
            if reader.fingerprint not in transport_ok:
                try:
                    check_key_transport(cert.public_key())
                except UnsupportedAlgorithm as exc:
                    refused.append(Refusal(path, RejectReason.UNSUPPORTED_KEY, f"{reader.dn}: {exc}"))
                    continue
                transport_ok.add(reader.fingerprint)
            if reader.fingerprint in seen:
                continue
            if allow is not None and reader.dn not in allow:
                refused.append(Refusal(path, RejectReason.DN_NOT_ALLOWED, f"{reader.dn}: not in {allow.path}"))
                continue
            if trust is not None and not (cache is not None and now < cache.accepted.get(reader.fingerprint, now)):
                try:
                    trust.validate(cert, usage=Usage.ENCRYPT, at=at, **validate_options)
                except CertificateRejected as exc:
                    refused.append(Refusal(path, exc.reason, str(exc)))
                    continue
                if cache is not None:
                    cache.accepted[reader.fingerprint] = min(cert.not_valid_after_utc, trust.valid_until)
            seen.add(reader.fingerprint)
            readers.append(reader)
        if cache is not None:
            if len(cache.parsed) > len(names):  # files went: forget them
                present = set(names)
                cache.parsed = {name: v for name, v in cache.parsed.items() if name in present}
            if len(transport_ok) > len(readers) + len(refused):
                transport_ok.intersection_update(r.fingerprint for r in readers)
        return ReaderSet(tuple(readers), tuple(refused))

    def _parsed(self, name: str, cache: LoadCache | None, directory_fd: int | None,
                inode: int | None = None) -> Reader | Exception:
        """The reader of file ``name`` (parsed again only when the file changed; with ``inode``, when its inode
        did), or why it cannot be read."""
        try:
            if cache is None:
                return Reader(load_certificate(self.directory / name), self.directory / name)
            hit = cache.parsed.get(name)
            if inode is not None and hit is not None and hit[0][1] == inode:
                return hit[1]
            key = stat_key(name, directory_fd)
            if hit is not None and hit[0] == key:
                return hit[1]
            reader = Reader(load_certificate(self.directory / name), self.directory / name)
        except (KeyFileError, OSError) as exc:
            return exc
        cache.parsed[name] = (key, reader)
        return reader

    def add(self, cert: x509.Certificate, trust: TrustStore | None = None, **validate_options) -> Reader:
        """Add a reader certificate (validated first when ``trust`` is given)."""
        try:
            check_key_transport(cert.public_key())
        except UnsupportedAlgorithm as exc:
            raise RegistryError(f"{slash_dn(cert.subject)}: {exc}") from None
        if trust is not None:
            trust.validate(cert, usage=Usage.ENCRYPT, **validate_options)
        self.directory.mkdir(parents=True, exist_ok=True)
        reader = Reader(cert)
        # Files we write are named by fingerprint, so a duplicate is one lookup, not a scan of
        # thousands of files (a copy an admin dropped in under another name is merged by load()).
        path = self.directory / f"{reader.fingerprint[:16]}.pem"
        try:
            if path.exists() and fingerprint(load_certificate(path)) == reader.fingerprint:
                raise RegistryError(f"{reader.dn}: already registered as {path}")
        except KeyFileError:
            pass
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
