"""The reader registry: which certificates may read a stream.

A registry is a directory of PEM certificates, one reader per file, optionally
narrowed by an SSM-style DN allow-list.  Loading it gives an immutable
:class:`ReaderSet`; a publisher compares successive sets and rekeys when one
changes, so editing the directory (``zmqsec keys readers add|remove``) is
how an operator grants and revokes access on a live stream.
"""

from __future__ import annotations

import contextlib
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
    last: "_LastLoad | None" = None  # the last load's result and what it was judged on


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


NEVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class _LastLoad:
    """A load's result, kept so that the next one can judge only what changed."""

    listing: dict  # file name -> inode
    entries: dict  # file name -> Reader or Refusal (a certificate under a second name: its Reader too)
    refused: list  # file names refused (judged again at every load)
    allowed: frozenset | None  # the allow-list's DNs it was judged with
    until: dt.datetime  # the first accepted verdict to expire


@dataclass
class _Judge:
    """Whether one registry file is an authorized reader: readable, able to receive a key by transport, on
    the allow-list, and valid for encryption under the trust store (verdicts kept in the cache)."""

    allow: DnAllowList | None
    trust: TrustStore | None
    cache: LoadCache | None
    at: dt.datetime | None
    now: dt.datetime
    options: dict

    def __call__(self, directory: Path, name: str, reader: Reader | Exception) -> Reader | Refusal:
        """The verdict on file ``name`` of ``directory``, given what parsing it gave."""
        if isinstance(reader, Exception):
            return Refusal(directory / name, RejectReason.UNREADABLE, str(reader))
        cache, cert = self.cache, reader.certificate
        transport_ok = cache.transport_ok if cache is not None else set()
        if reader.fingerprint not in transport_ok:
            try:
                check_key_transport(cert.public_key())
            except UnsupportedAlgorithm as exc:
                return Refusal(reader.path, RejectReason.UNSUPPORTED_KEY, f"{reader.dn}: {exc}")
            transport_ok.add(reader.fingerprint)
        if self.allow is not None and reader.dn not in self.allow:
            return Refusal(reader.path, RejectReason.DN_NOT_ALLOWED, f"{reader.dn}: not in {self.allow.path}")
        if self.trust is not None and not (cache is not None and self.now < cache.accepted.get(reader.fingerprint, self.now)):
            try:
                self.trust.validate(cert, usage=Usage.ENCRYPT, at=self.at, **self.options)
            except CertificateRejected as exc:
                return Refusal(reader.path, exc.reason, str(exc))
            if cache is not None:
                cache.accepted[reader.fingerprint] = min(cert.not_valid_after_utc, self.trust.valid_until)
        return reader


def _snapshot(entries: dict, listing: dict[str, int], judge: "_Judge", cache: LoadCache | None,
              judged: tuple[dt.datetime, list] | None = None) -> ReaderSet:
    """The reader set of judged ``entries`` (a certificate under two names counts once: whichever name
    comes first), remembered in ``cache`` as the basis of the next load; ``judged``: the last load's first
    verdict expiry and the entries judged since (the others' verdicts are the same)."""
    readers, refused, owners = [], [], set()
    for entry in entries.values():
        if isinstance(entry, Refusal):
            refused.append(entry)
        elif entry.fingerprint not in owners:
            owners.add(entry.fingerprint)
            readers.append(entry)
    if cache is not None:
        if len(cache.transport_ok) > len(readers) + len(refused):
            cache.transport_ok.intersection_update(owners)
        if judge.trust is None:
            until = NEVER
        elif judged is None:
            until = min((cache.accepted.get(fp, judge.now) for fp in owners), default=NEVER)
        else:
            until = min([judged[0]] + [cache.accepted.get(e.fingerprint, judge.now) for e in judged[1]
                                       if isinstance(e, Reader)])
        cache.last = _LastLoad(listing, entries, [r.path.name for r in refused],
                               judge.allow.dns if judge.allow else None, until)
    return ReaderSet(tuple(readers), tuple(refused))


@contextlib.contextmanager
def _directory_fd(directory: Path, cache: LoadCache | None):
    """``directory`` open (files are looked at relative to it), with a cache."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if cache is not None else None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


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
        return [self.directory / name for name in sorted(self._listing())]

    def _listing(self) -> dict[str, int]:
        """File name -> inode number of each certificate file; the listing alone tells both (no stat), except
        for a symbolic link: its target's inode (the link's own stays when the target is replaced)."""
        try:
            with os.scandir(self.directory) as listing:  # no stat per entry: registries hold thousands
                return {e.name: e.stat().st_ino if e.is_symlink() else e.inode()
                        for e in listing if e.name.endswith(".pem") and e.is_file()}
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
        ``restat``); and when the last load was judged on the same basis (the
        same trust store object, allow-list and options, no verdict expired
        since), only the names added, removed or replaced since are judged, and
        the refusals again: a revocation among 100,000 readers costs a listing,
        not a pass over every reader.  The order of the readers means nothing.
        """
        allow = self._allow_list()
        now = at or dt.datetime.now(dt.timezone.utc)
        if cache is not None and cache.options != validate_options:
            cache.accepted, cache.trust, cache.options, cache.last = {}, trust, dict(validate_options), None
        if cache is not None and cache.trust is not trust:
            cache.accepted, cache.trust, cache.last = _verdicts_kept(cache, trust, now), trust, None
        listing = self._listing()
        judge = _Judge(allow, trust, cache, at, now, validate_options)
        last = cache.last if cache is not None and not restat else None
        if last is not None and last.allowed == (allow.dns if allow else None) and now < last.until:
            quick = self._changed_only(listing, last, judge, cache)
            if quick is not None:
                return quick
        names = sorted(listing)
        if prejudge is not None and cache is not None and trust is not None:
            prejudge(self, names, cache, trust, at, now, validate_options)
        with _directory_fd(self.directory, cache) as directory_fd:
            entries = {name: judge(self.directory, name, self._parsed(name, cache, directory_fd,
                                                                       None if restat else listing[name]))
                       for name in names}
        if cache is not None and len(cache.parsed) > len(names):  # files went: forget them
            cache.parsed = {name: v for name, v in cache.parsed.items() if name in listing}
        return _snapshot(entries, listing, judge, cache)

    def _changed_only(self, listing: dict[str, int], last: "_LastLoad", judge: "_Judge",
                      cache: LoadCache) -> ReaderSet | None:
        """The last load's result with only what changed judged again (and the refusals), or None when so much
        changed that a full pass is due."""
        gone = [name for name in last.listing if name not in listing]
        new = [name for name, inode in listing.items() if last.listing.get(name) != inode]
        if len(gone) + len(new) > max(64, len(listing) // 100):
            return None
        entries = dict(last.entries)
        for name in gone:
            del entries[name]
            cache.parsed.pop(name, None)
        judged = []
        with _directory_fd(self.directory, cache) as directory_fd:
            for name in dict.fromkeys(new + [name for name in last.refused if name in listing]):
                entries[name] = judge(self.directory, name, self._parsed(name, cache, directory_fd, listing[name]))
                judged.append(entries[name])
        return _snapshot(entries, listing, judge, cache, (last.until, judged))

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
