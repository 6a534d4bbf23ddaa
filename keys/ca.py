"""A local certificate authority for sites without a grid CA.

Layout of a CA directory (everything public is 0644, the key 0600)::

    DIR/ca.pem            the CA certificate
    DIR/ca.key            its private key
    DIR/crl.pem           the current CRL (its validity period is kept on renewal)
    DIR/issued/<serial>.pem  every certificate issued, for audit and revocation by serial
    DIR/certificates/     a hashed trust directory: <hash>.0 (CA) and <hash>.r0 (CRL),
                          usable as ``openssl verify -CApath DIR/certificates -crl_check``
                          or merged into /etc/grid-security/certificates

The role profiles give each certificate the key usages its job needs and no
more; they are what the trust layer checks with :class:`keys.trust.Usage`.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .dn import slash_dn
from .errors import AuthorityError, KeyFileError
from .hashdir import install_ca_certificate, install_crl
from .pemfiles import PrivateKey, cert_pem, load_certificate, load_crl, load_private_key, public_key_der, write_private_key, write_public

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC: the default ``clock``."""
    return dt.datetime.now(dt.timezone.utc)


class KeyType(enum.Enum):
    """The key algorithm of a new key pair: RSA, or EC on P-256."""

    RSA = "rsa"
    EC = "ec"


class Role(enum.Enum):
    """What a certificate is for; decides its key usages."""

    PUBLISHER = "publisher"  # signs key announcements and stream checkpoints
    READER = "reader"  # receives data keys (RSA key transport / EC key agreement)
    BRIDGE = "bridge"  # signs S/MIME to the broker, reads the stream, TLS client
    SERVER = "server"  # accounting server: decrypts S/MIME, TLS server (broker)


def generate_key(key_type: KeyType = KeyType.RSA, rsa_bits: int = 2048) -> PrivateKey:
    """A new private key: P-256 for EC (``rsa_bits`` ignored), else RSA; raises :class:`AuthorityError` below 2048 bits."""
    if key_type is KeyType.EC:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits < 2048:
        raise AuthorityError(f"RSA key size {rsa_bits} is too small; use 2048 or more")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def _key_usage(role: Role, key: PrivateKey) -> x509.KeyUsage:
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    sign = role in (Role.PUBLISHER, Role.BRIDGE, Role.SERVER)
    receive = role in (Role.READER, Role.BRIDGE, Role.SERVER)
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=receive and not is_ec,
        data_encipherment=False,
        key_agreement=receive and is_ec,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _extended_key_usage(role: Role) -> x509.ExtendedKeyUsage:
    # emailProtection for CMS/S-MIME; clientAuth only where the key can sign a TLS handshake.
    usages = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    if role is not Role.READER:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if role is Role.SERVER:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    return x509.ExtendedKeyUsage(usages)


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise AuthorityError(f"--san {text!r} is neither a DNS name nor an IP address")
    return x509.DNSName(text)


def _safe_filename(cn: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", cn).strip("._")
    return name or "certificate"


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate and where its files were written."""

    certificate: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA directory opened for issuing and revoking."""

    directory: Path
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def trust_dir(self) -> Path:
        """The hashed trust directory (CA certificate and CRL) for ``openssl verify -CApath``."""
        return self.directory / "certificates"

    @property
    def crl_path(self) -> Path:
        """The current CRL file, ``DIR/crl.pem``."""
        return self.directory / "crl.pem"

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike,
        *,
        subject: x509.Name | None = None,
        key_type: KeyType = KeyType.RSA,
        rsa_bits: int = 3072,
        days: int = 3650,
        crl_days: int = 30,
        clock: Clock = utcnow,
    ) -> "CertificateAuthority":
        """Create a CA in ``directory`` (which must not already hold one)."""
        directory = Path(directory)
        if (directory / "ca.pem").exists() or (directory / "ca.key").exists():
            raise AuthorityError(f"{directory}: already holds a CA (ca.pem/ca.key); choose another directory")
        subject = subject or x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zmqsec"),
            x509.NameAttribute(NameOID.COMMON_NAME, "zmqsec local CA"),
        ])
        key = generate_key(key_type, rsa_bits)
        now = clock()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        try:
            (directory / "issued").mkdir(parents=True, exist_ok=True)
            (directory / "certificates").mkdir(exist_ok=True)
        except OSError as exc:
            raise AuthorityError(f"{directory}: cannot create CA directory ({exc.strerror})") from None
        write_private_key(directory / "ca.key", key)
        write_public(directory / "ca.pem", cert_pem(cert))
        ca = cls(directory, cert, key)
        install_ca_certificate(ca.trust_dir, cert)
        ca._write_crl([], period=dt.timedelta(days=crl_days), number=1, clock=clock)
        return ca

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "CertificateAuthority":
        """Open an existing CA directory; raises :class:`AuthorityError` if there is none or its key does not match."""
        directory = Path(directory)
        if not (directory / "ca.pem").exists():
            raise AuthorityError(f"{directory}: no CA here (ca.pem missing); create one with `zmqsec keys init-ca {directory}`")
        cert = load_certificate(directory / "ca.pem")
        key = load_private_key(directory / "ca.key")
        if public_key_der(cert) != public_key_der(key):
            raise AuthorityError(f"{directory}: ca.key does not match ca.pem")
        return cls(directory, cert, key)

    # -- issuing ---------------------------------------------------------------

    def issue(
        self,
        *,
        role: Role,
        cn: str,
        out_dir: str | os.PathLike | None = None,
        key: PrivateKey | None = None,
        key_type: KeyType = KeyType.RSA,
        subject: x509.Name | None = None,
        sans: Iterable[str] = (),
        days: int = 395,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        clock: Clock = utcnow,
    ) -> Issued:
        """Issue a certificate for ``role``; write ``OUT/<cn>.pem`` and ``OUT/<cn>.key`` (0600).

        ``key`` lets fixtures share one key pair among many certificates.
        """
        if not cn or len(cn) > 64:
            raise AuthorityError("--cn must be 1 to 64 characters")
        key = key or generate_key(key_type)
        now = clock()
        if subject is None:
            base = [rdn for rdn in self.certificate.subject.rdns
                    if not any(a.oid == NameOID.COMMON_NAME for a in rdn)]
            subject = x509.Name(base + [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])])
        names = [_general_name(s) for s in sans]
        if role is Role.SERVER and _HOSTNAME.match(cn) and x509.DNSName(cn) not in names:
            names.insert(0, x509.DNSName(cn))
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(role, key), critical=True)
            .add_extension(_extended_key_usage(role), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        write_public(self.directory / "issued" / f"{cert.serial_number:x}.pem", cert_pem(cert))
        out = Path(out_dir) if out_dir is not None else self.directory / "issued"
        out.mkdir(parents=True, exist_ok=True)
        stem = _safe_filename(cn)
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
        write_private_key(key_path, key)
        write_public(cert_path, cert_pem(cert))
        return Issued(cert, key, cert_path, key_path)

    # -- revocation --------------------------------------------------------------

    def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL as last written to ``crl.pem``."""
        return load_crl(self.crl_path)

    def revoke(self, cert: x509.Certificate, *, reason: x509.ReasonFlags | None = None, clock: Clock = utcnow) -> x509.CertificateRevocationList:
        """Add ``cert`` to the CRL and re-sign it; idempotent for an already revoked certificate."""
        if cert.issuer != self.certificate.subject:
            raise AuthorityError(f"{slash_dn(cert.subject)} was issued by {slash_dn(cert.issuer)}, not by this CA")
        try:
            cert.verify_directly_issued_by(self.certificate)
        except Exception:
            raise AuthorityError(f"{slash_dn(cert.subject)}: not signed by this CA's key") from None
        crl = self.current_crl()
        entries = list(crl)
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None:
            builder = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(clock())
            if reason is not None:
                builder = builder.add_extension(x509.CRLReason(reason), critical=False)
            entries.append(builder.build())
        return self._renew(crl, entries, clock)

    def refresh_crl(self, *, clock: Clock = utcnow) -> x509.CertificateRevocationList:
        """Re-sign the CRL with a new validity period (run it from cron, as fetch-crl runs)."""
        crl = self.current_crl()
        return self._renew(crl, list(crl), clock)

    def _renew(self, crl, entries, clock: Clock) -> x509.CertificateRevocationList:
        period = (crl.next_update_utc or crl.last_update_utc + dt.timedelta(days=30)) - crl.last_update_utc
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
        return self._write_crl(entries, period=period, number=number, clock=clock)

    def _write_crl(self, entries, *, period: dt.timedelta, number: int, clock: Clock) -> x509.CertificateRevocationList:
        # Back-dated a little for clock skew; the period itself is kept exactly.
        last_update = clock() - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(last_update)
            .next_update(last_update + period)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for entry in entries:
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self.key, hashes.SHA256())
        write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        install_crl(self.trust_dir, crl)
        return crl


def find_issued(ca: CertificateAuthority, selector: str) -> x509.Certificate:
    """A certificate this CA issued, by file path or hexadecimal serial."""
    path = Path(selector)
    if path.exists():
        return load_certificate(path)
    candidate = ca.directory / "issued" / f"{selector.lower().lstrip('0') or '0'}.pem"
    if candidate.exists():
        return load_certificate(candidate)
    raise KeyFileError(f"{selector}: neither a certificate file nor the serial of a certificate in {ca.directory / 'issued'}")
