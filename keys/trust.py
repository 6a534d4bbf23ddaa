"""The one place that decides whether a certificate is acceptable.

A :class:`TrustStore` is read once from a hashed CA directory (our own CA's
``certificates/`` or a grid ``/etc/grid-security/certificates`` holding many
CAs, their CRLs and ``.signing_policy``/``.namespaces`` files, which are
ignored).  :meth:`TrustStore.validate` then builds and checks a chain the way
``openssl verify -CApath DIR -crl_check [-purpose smimesign|smimeencrypt]``
does, and refuses with a specific :class:`CertificateRejected` subclass:

* chain to a self-issued CA found in the directory, each signature verified;
* every certificate in the chain inside its validity window;
* issuers are CAs (basicConstraints, or the tolerances OpenSSL keeps for v1
  roots and keyUsage-only CAs), keyCertSign when keyUsage is present,
  pathLenConstraint honoured, no unknown critical extension;
* the end entity's CRL (or every link's, with ``crl_all``) present, current,
  signed by the issuer, and not listing the certificate;
* optional purpose: keyUsage/extendedKeyUsage allowing signing or encryption;
* optional DN allow-list on the end entity's subject.

The tests hold this to the openssl CLI's verdicts, both ways.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from . import errors
from .dn import DnAllowList, slash_dn
from .errors import KeyFileError
from .hashdir import HASHED_CERT, HASHED_CRL, name_hash
from .pemfiles import load_certificates, load_crl

log = logging.getLogger(__name__)

MAX_CHAIN = 10

# Critical extensions OpenSSL understands (v3_purp.c supported_nids) and so do we.
_HANDLED_CRITICAL = {
    ExtensionOID.KEY_USAGE,
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.INHIBIT_ANY_POLICY,
    x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # netscape cert type
}


class Usage(enum.Enum):
    """What the end-entity key will be used for (OpenSSL's S/MIME purposes)."""

    SIGN = "sign"  # signatures: digitalSignature or nonRepudiation
    ENCRYPT = "encrypt"  # key transport / agreement to this certificate


class CrlPolicy(enum.Enum):
    """How CRLs are checked: as ``-crl_check``, only when present, or not at all."""

    REQUIRE = "require"
    IF_PRESENT = "if-present"
    OFF = "off"


@dataclass(frozen=True)
class Chain:
    """A validated path, end entity first, trust anchor last."""

    certificates: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate the chain was built for."""
        return self.certificates[0]

    @property
    def subject_dn(self) -> str:
        """The end entity's subject DN in slash form."""
        return slash_dn(self.leaf.subject)


def _ext(cert_or_crl, oid):
    try:
        return cert_or_crl.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def _describe(cert: x509.Certificate) -> str:
    return slash_dn(cert.subject) or "<empty subject>"


def _describe_safe(cert: x509.Certificate) -> str:
    try:
        return _describe(cert)
    except ValueError:
        return "<unparseable subject>"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError):
        return False


def _key_ids_match(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """AKI/SKI agreement, as X509_check_issued requires when both are present."""
    aki = _ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    ski = _ext(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    if aki is None or aki.value.key_identifier is None or ski is None:
        return True
    return aki.value.key_identifier == ski.value.digest


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and _key_ids_match(cert, cert)


def _ca_status(cert: x509.Certificate) -> bool:
    """OpenSSL's check_ca() in non-strict mode: may this certificate issue others?"""
    ku = _ext(cert, ExtensionOID.KEY_USAGE)
    if ku is not None and not ku.value.key_cert_sign:
        return False
    bc = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if bc is not None:
        return bc.value.ca
    if cert.version == x509.Version.v1 and _self_issued(cert):
        return True  # v1 roots
    return ku is not None


def _eku_allows(cert: x509.Certificate) -> bool:
    """S/MIME signing and encryption both need emailProtection when an EKU is present (OpenSSL's XKU_SMIME)."""
    eku = _ext(cert, ExtensionOID.EXTENDED_KEY_USAGE)
    return eku is None or ExtendedKeyUsageOID.EMAIL_PROTECTION in eku.value


def _ku_allows(cert: x509.Certificate, usage: Usage) -> bool:
    ku = _ext(cert, ExtensionOID.KEY_USAGE)
    if ku is None:
        return True
    ku = ku.value
    if usage is Usage.SIGN:
        return ku.digital_signature or ku.content_commitment
    # OpenSSL's smimeencrypt asks keyEncipherment; EC recipients use keyAgreement.
    if isinstance(ku, x509.KeyUsage) and ku.key_agreement and not ku.key_encipherment:
        return True
    return ku.key_encipherment


def _check_extensions(cert: x509.Certificate, depth: int) -> None:
    try:
        extensions = cert.extensions
    except ValueError as exc:
        raise errors.UnhandledCriticalExtension(f"{_describe(cert)}: malformed extensions ({exc})", depth=depth) from None
    for ext in extensions:
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            raise errors.UnhandledCriticalExtension(
                f"{_describe(cert)}: unhandled critical extension {ext.oid.dotted_string}", depth=depth)


def _check_time(cert: x509.Certificate, depth: int, at: dt.datetime) -> None:
    if cert.not_valid_before_utc > at:
        raise errors.CertificateNotYetValid(
            f"{_describe(cert)}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}", depth=depth)
    if cert.not_valid_after_utc < at:
        raise errors.CertificateExpired(
            f"{_describe(cert)}: expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}", depth=depth)


def _check_issuer(chain: list[x509.Certificate], depth: int) -> None:
    issuer = chain[depth]
    if not _ca_status(issuer):
        raise errors.NotACertificateAuthority(
            f"{_describe(issuer)}: is not a CA (basicConstraints/keyUsage) but issued {_describe(chain[depth - 1])}",
            depth=depth)
    bc = _ext(issuer, ExtensionOID.BASIC_CONSTRAINTS)
    if bc is not None and bc.value.path_length is not None:
        # Non-self-issued intermediates between the end entity and this CA.
        below = sum(1 for c in chain[1:depth] if not _self_issued(c))
        if below > bc.value.path_length:
            raise errors.PathTooLong(
                f"{_describe(issuer)}: pathLenConstraint {bc.value.path_length} exceeded", depth=depth)


def _check_usage(chain: list[x509.Certificate], usage: Usage) -> None:
    leaf = chain[0]
    if not _ku_allows(leaf, usage):
        raise errors.WrongKeyUsage(f"{_describe(leaf)}: keyUsage does not allow {usage.value}")
    for depth, cert in enumerate(chain):
        if not _eku_allows(cert):
            raise errors.WrongKeyUsage(
                f"{_describe(cert)}: extendedKeyUsage lacks emailProtection (needed to {usage.value})", depth=depth)


def _read_hashed_directory(path: Path) -> tuple[dict, dict, tuple[str, ...]]:
    """(CA certificates by hash, CRLs by hash, problems) of a hashed directory, as OpenSSL would find them."""
    path = Path(path)
    try:
        entries = sorted(path.iterdir())
    except FileNotFoundError:
        raise KeyFileError(f"{path}: trust directory not found") from None
    except NotADirectoryError:
        raise KeyFileError(f"{path}: not a directory (expected a hashed CA directory)") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied listing trust directory") from None
    cas: dict[str, list[x509.Certificate]] = {}
    crls: dict[str, list[x509.CertificateRevocationList]] = {}
    problems: list[str] = []
    for entry in entries:
        cert_match = HASHED_CERT.match(entry.name)
        crl_match = HASHED_CRL.match(entry.name)
        if not (cert_match or crl_match):
            continue  # .signing_policy, .namespaces, .info, *.pem originals ...
        try:
            if cert_match:
                for cert in load_certificates(entry):
                    if name_hash(cert.subject) != cert_match.group(1):
                        problems.append(f"{entry}: subject hash is {name_hash(cert.subject)}, not {cert_match.group(1)}; ignored (run `zmqsec keys rehash`)")
                        continue
                    cas.setdefault(cert_match.group(1), []).append(cert)
            else:
                crl = load_crl(entry)
                if name_hash(crl.issuer) != crl_match.group(1):
                    problems.append(f"{entry}: issuer hash is {name_hash(crl.issuer)}, not {crl_match.group(1)}; ignored")
                    continue
                crls.setdefault(crl_match.group(1), []).append(crl)
        except KeyFileError as exc:
            problems.append(str(exc))
    for problem in problems:
        log.warning("trust directory: %s", problem)
    return {k: tuple(v) for k, v in cas.items()}, {k: tuple(v) for k, v in crls.items()}, tuple(problems)


class _Memo:
    """Answers about a store's own certificates and CRLs, which every leaf under them asks again:
    (id(crl), id(issuer)) or id(cert) -> (the objects, kept alive so that no id is reused, answer)."""

    LIMIT = 4096  # untrusted intermediates are remembered too: stay bounded

    def __init__(self) -> None:
        self._answers: dict = {}

    def _remember(self, key, objects: tuple, compute) -> bool:
        hit = self._answers.get(key)
        if hit is not None:
            return hit[1]
        if len(self._answers) >= self.LIMIT:
            self._answers.clear()
        answer = compute()
        self._answers[key] = (objects, answer)
        return answer

    def crl_signed_by(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        return self._remember((id(crl), id(issuer)), (crl, issuer), lambda: _crl_signed_by(crl, issuer))

    def self_issued(self, cert: x509.Certificate) -> bool:
        return self._remember(id(cert), (cert,), lambda: _self_issued(cert))


@dataclass(frozen=True)
class TrustStore:
    """Trusted CA certificates and their CRLs, indexed by subject hash as OpenSSL does."""

    cas: dict[str, tuple[x509.Certificate, ...]]
    crls: dict[str, tuple[x509.CertificateRevocationList, ...]]
    source: str = "<memory>"
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> "TrustStore":
        """Read a hashed CA directory; files OpenSSL would not find are skipped (and noted)."""
        cas, crls, problems = _read_hashed_directory(Path(path))
        return cls(cas, crls, str(path), problems)

    @classmethod
    def from_certificates(cls, certs: Iterable[x509.Certificate], crls: Iterable[x509.CertificateRevocationList] = ()) -> "TrustStore":
        """A store of CA certificates and CRLs already in memory, indexed as a hashed directory would be."""
        by_hash: dict[str, list] = {}
        for cert in certs:
            by_hash.setdefault(name_hash(cert.subject), []).append(cert)
        crl_hash: dict[str, list] = {}
        for crl in crls:
            crl_hash.setdefault(name_hash(crl.issuer), []).append(crl)
        return cls({k: tuple(v) for k, v in by_hash.items()}, {k: tuple(v) for k, v in crl_hash.items()})

    @property
    def ca_certificates(self) -> list[x509.Certificate]:
        """Every trusted CA certificate, in one list."""
        return [c for group in self.cas.values() for c in group]

    @functools.cached_property
    def _memo(self) -> "_Memo":
        return _Memo()

    @functools.cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 over every CA certificate and CRL (DER, sorted): equal stores give equal verdicts."""
        ders = sorted(c.public_bytes(serialization.Encoding.DER) for c in self.ca_certificates)
        ders += sorted(crl.public_bytes(serialization.Encoding.DER) for group in self.crls.values() for crl in group)
        return hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in ders)).digest()

    @property
    def valid_until(self) -> dt.datetime:
        """When a verdict of this store may change by time alone: the first CA expiry or CRL nextUpdate."""
        moments = [c.not_valid_after_utc for c in self.ca_certificates]
        moments += [crl.next_update_utc for group in self.crls.values() for crl in group if crl.next_update_utc]
        return min(moments, default=dt.datetime.max.replace(tzinfo=dt.timezone.utc))

    def crl_changes_since(self, older: "TrustStore", at: dt.datetime) -> dict[str, frozenset[int] | None] | None:
        """What replacing ``older`` by this store means for the verdicts ``older`` gave on leaf certificates.

        None: judge every certificate again (the CA certificates differ, or a CA whose CRLs changed issued
        another CA of the store, which they may revoke with every leaf under it).  Otherwise, by subject hash of
        each CA whose CRLs changed: the serial numbers its CRLs list now (the only leaves it issued whose verdict
        may have changed), or None where every leaf it issued is to be judged again (its CRLs now are not all
        signed by it and current, or it has none).
        """
        def ders(items) -> set[bytes]:
            return {item.public_bytes(serialization.Encoding.DER) for item in items}

        if ders(self.ca_certificates) != ders(older.ca_certificates):
            return None
        changes: dict[str, frozenset[int] | None] = {}
        for key in self.crls.keys() | older.crls.keys():
            crls = self.crls.get(key, ())
            if ders(crls) == ders(older.crls.get(key, ())):
                continue
            issuers = self.cas.get(key, ()) or older.cas.get(key, ())
            if any(ca.issuer == issuer.subject and not _self_issued(ca) for issuer in issuers
                   for ca in self.ca_certificates):
                return None
            current = bool(crls) and all(
                any(crl.issuer == issuer.subject and _crl_signed_by(crl, issuer) for issuer in issuers)
                and crl.last_update_utc <= at and (crl.next_update_utc is None or at <= crl.next_update_utc)
                for crl in crls)
            changes[key] = frozenset(entry.serial_number for crl in crls for entry in crl) if current else None
        return changes

    # -- chain building -------------------------------------------------

    def _issuer_candidates(self, cert: x509.Certificate, untrusted: Iterable[x509.Certificate]) -> list[tuple[x509.Certificate, bool]]:
        found = [(c, True) for c in self.cas.get(name_hash(cert.issuer), ()) if c.subject == cert.issuer]
        # An untrusted certificate may be an intermediate, never its own issuer: only the store ends a chain.
        found += [(c, False) for c in untrusted if c.subject == cert.issuer and c != cert]
        # X509_check_issued: names equal and, where both are present, AKI matches SKI.
        return [pair for pair in found if _key_ids_match(cert, pair[0])]

    def _build(self, leaf: x509.Certificate, untrusted: tuple[x509.Certificate, ...]) -> list[x509.Certificate]:
        chain = [leaf]
        # A self-issued end entity that is itself in the store is its own anchor.
        if _self_issued(leaf) and any(c == leaf for c in self.cas.get(name_hash(leaf.subject), ())):
            return chain
        current = leaf
        while len(chain) <= MAX_CHAIN:
            candidates = self._issuer_candidates(current, untrusted)
            if not candidates:
                depth = len(chain) - 1
                if _self_issued(current):
                    raise errors.UnknownIssuer(
                        f"{_describe(current)}: self-signed certificate is not in the trust directory {self.source}", depth=depth)
                raise errors.UnknownIssuer(
                    f"{_describe(current)}: issuer {slash_dn(current.issuer)} is not in the trust directory {self.source}",
                    depth=depth)
            # Among same-named issuers, take the first whose signature verifies (key rollover).
            issuer = next((c for c, _ in candidates if _issued_by(current, c)), None)
            if issuer is None:
                raise errors.BadSignature(
                    f"{_describe(current)}: signature does not verify with the key of {slash_dn(current.issuer)}",
                    depth=len(chain) - 1)
            if issuer == current:  # self-signed: acceptable only as a trust anchor from the store
                if not any(c == current for c in self.cas.get(name_hash(current.subject), ())):
                    raise errors.UnknownIssuer(
                        f"{_describe(current)}: self-signed certificate is not in the trust directory {self.source}",
                        depth=len(chain) - 1)
                return chain
            chain.append(issuer)
            if self._memo.self_issued(issuer):
                if not any(c == issuer for c in self.cas.get(name_hash(issuer.subject), ())):
                    raise errors.UnknownIssuer(
                        f"{_describe(issuer)}: root CA is not in the trust directory {self.source}", depth=len(chain) - 1)
                return chain
            current = issuer
        raise errors.PathTooLong(f"{_describe(leaf)}: chain longer than {MAX_CHAIN} certificates")

    # -- validation ---------------------------------------------------------

    def validate(
        self,
        cert: x509.Certificate,
        *,
        usage: Usage | None = None,
        untrusted: Iterable[x509.Certificate] = (),
        at: dt.datetime | None = None,
        crl: CrlPolicy = CrlPolicy.REQUIRE,
        crl_all: bool = False,
        allowed_dns: DnAllowList | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> Chain:
        """Validate ``cert`` now (or ``at``); return the chain or raise :class:`CertificateRejected`."""
        if at is None:
            at = clock() if clock else dt.datetime.now(dt.timezone.utc)
        try:
            return self._validate(cert, usage, tuple(untrusted), at, crl, crl_all, allowed_dns)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            # cryptography parses extensions lazily: a malformed certificate surfaces here.
            raise errors.MalformedCertificate(f"{_describe_safe(cert)}: malformed certificate ({exc.__class__.__name__})") from None

    def _validate(self, cert, usage, untrusted, at, crl, crl_all, allowed_dns) -> Chain:
        # Checks run in OpenSSL's order (check_chain, check_revocation,
        # internal_verify) so that a certificate with several defects is
        # refused for the same reason by both.
        chain = self._build(cert, untrusted)
        for depth, link in enumerate(chain):
            _check_extensions(link, depth)
            if depth > 0:
                _check_issuer(chain, depth)
        if usage is not None:
            _check_usage(chain, usage)
        if crl is not CrlPolicy.OFF:
            last = len(chain) - 1 if crl_all else 1
            for depth in range(min(last, len(chain) - 1)):
                self._check_crl(chain[depth], chain[depth + 1], depth, at, crl)
        for depth in range(len(chain) - 1, -1, -1):
            _check_time(chain[depth], depth, at)
        if allowed_dns is not None:
            dn = slash_dn(cert.subject)
            if dn not in allowed_dns:
                where = f" ({allowed_dns.path})" if allowed_dns.path else ""
                raise errors.SignerNotAllowed(f"{dn}: DN is not on the allow-list{where}")
        return Chain(tuple(chain))

    def _check_crl(self, cert: x509.Certificate, issuer: x509.Certificate, depth: int, at: dt.datetime, policy: CrlPolicy) -> None:
        candidates = [c for c in self.crls.get(name_hash(issuer.subject), ()) if c.issuer == issuer.subject]
        signed = [c for c in candidates if self._memo.crl_signed_by(c, issuer)]
        if not signed:
            if candidates:
                raise errors.BadSignature(f"CRL of {_describe(issuer)}: signature does not verify", depth=depth)
            if policy is CrlPolicy.IF_PRESENT:
                return
            raise errors.CrlMissing(
                f"{_describe(cert)}: no CRL of {_describe(issuer)} in {self.source} (run fetch-crl or `zmqsec keys crl`)",
                depth=depth)
        ku = _ext(issuer, ExtensionOID.KEY_USAGE)
        if ku is not None and not ku.value.crl_sign:
            raise errors.WrongKeyUsage(f"{_describe(issuer)}: keyUsage lacks cRLSign but signs a CRL", depth=depth)
        # The newest CRL decides (fetch-crl keeps one; a directory may hold several).
        current = max(signed, key=lambda c: c.last_update_utc)
        if current.last_update_utc > at:
            raise errors.CrlNotYetValid(f"CRL of {_describe(issuer)}: not valid before {current.last_update_utc:%Y-%m-%d %H:%M:%SZ}", depth=depth)
        if current.next_update_utc is not None and current.next_update_utc < at:
            raise errors.CrlExpired(
                f"CRL of {_describe(issuer)}: expired at {current.next_update_utc:%Y-%m-%d %H:%M:%SZ} (refresh it)", depth=depth)
        revoked = current.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            raise errors.CertificateRevoked(
                f"{_describe(cert)}: revoked by {_describe(issuer)} on {revoked.revocation_date_utc:%Y-%m-%d %H:%M:%SZ}",
                depth=depth)
