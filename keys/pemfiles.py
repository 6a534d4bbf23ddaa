"""Reading and writing certificates, CRLs and private keys, strictly.

Every loader turns a library exception into a :class:`KeyFileError` that names
the file; private keys are written 0600 and refused when group or world can
read them, before a byte of them is read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from zmqsec.files import atomic_write

from .errors import InsecureKeyFile, KeyFileError, KeyMismatch

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Anything larger is not a certificate or key file we should parse.
MAX_PEM_FILE = 4 * 1024 * 1024
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def _read(path: Path, what: str, limit: int = MAX_PEM_FILE) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, expected a {what} file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied reading {what}") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise KeyFileError(f"{path}: {what} file is larger than {limit} bytes")
    return data


def parse_certificates(data: bytes, source: str = "<data>") -> list[x509.Certificate]:
    """Parse one or more PEM certificates, or a single DER certificate."""
    try:
        if _PEM_CERT in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion):
        raise KeyFileError(f"{source}: not a PEM or DER X.509 certificate") from None
    return certs


def load_certificates(path: str | os.PathLike) -> list[x509.Certificate]:
    """All certificates in a PEM (or single DER) file."""
    path = Path(path)
    return parse_certificates(_read(path, "certificate"), str(path))


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    """The first certificate in a PEM (or DER) file; further ones are a chain."""
    return load_certificates(path)[0]


def load_crl(path: str | os.PathLike) -> x509.CertificateRevocationList:
    """A CRL from a PEM or DER file (at most 64 MiB); the signature is not checked here."""
    path = Path(path)
    data = _read(path, "CRL", limit=64 * 1024 * 1024)
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM or DER X.509 CRL") from None


def check_private_key_mode(path: Path) -> None:
    """Refuse a key file that group or others may read, naming the fix."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: private key not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot stat private key ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"{path}: private key is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
            f"fix with: chmod 600 {path}"
        )


def load_private_key(path: str | os.PathLike, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key after checking that only its owner can read it."""
    path = Path(path)
    check_private_key_mode(path)
    data = _read(path, "private key", limit=1024 * 1024)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise KeyFileError(f"{path}: private key is encrypted; give its passphrase") from None
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM private key (or wrong passphrase)") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}; use RSA or EC")
    return key


def write_private_key(path: str | os.PathLike, key: PrivateKey) -> None:
    """Write ``key`` unencrypted as PKCS#8 PEM, created 0600 (never wider, whatever the umask)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, mode=0o600)


def write_public(path: str | os.PathLike, data: bytes) -> None:
    """Write a public file (certificate, CRL) atomically, mode 0644."""
    atomic_write(path, data, mode=0o644)


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM bytes."""
    return cert.public_bytes(serialization.Encoding.PEM)


def public_key_der(obj) -> bytes:
    """SubjectPublicKeyInfo DER of a certificate, public or private key."""
    if isinstance(obj, x509.Certificate):
        obj = obj.public_key()
    elif hasattr(obj, "public_key"):
        obj = obj.public_key()
    return obj.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Credential:
    """A certificate with its private key (and any chain sent along with it)."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def load(cls, cert_path: str | os.PathLike, key_path: str | os.PathLike) -> "Credential":
        """Load a certificate file (leaf first, then any chain) and its key; raises :class:`KeyMismatch` if they do not pair."""
        certs = load_certificates(cert_path)
        key = load_private_key(key_path)
        if public_key_der(certs[0]) != public_key_der(key):
            raise KeyMismatch(f"{key_path}: private key does not match certificate {cert_path}")
        return cls(certs[0], key, tuple(certs[1:]))
