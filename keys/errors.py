"""Error types of the trust layer: key files, the CA, the registry, and every certificate refusal."""

from __future__ import annotations

from zmqsec.errors import RejectReason, ZmqsecError


class KeyFileError(ZmqsecError):
    """A key, certificate or CRL file is missing, unreadable or malformed."""


class InsecureKeyFile(KeyFileError):
    """A private key file is readable by group or others."""


class KeyMismatch(KeyFileError):
    """A private key does not belong to the certificate it is paired with."""


class AuthorityError(ZmqsecError):
    """A local CA directory is missing, incomplete or cannot do what was asked."""


class RegistryError(ZmqsecError):
    """The reader registry or a DN allow-list cannot be read or changed as asked."""


class CertificateRejected(ZmqsecError):
    """A certificate failed validation.

    ``reason`` is a short stable token (for counters and logs); ``depth`` is the
    position in the chain of the certificate that failed (0 = the end entity).
    """

    reason = RejectReason.REJECTED

    def __init__(self, message: str, *, depth: int = 0) -> None:
        super().__init__(message)
        self.depth = depth


class MalformedCertificate(CertificateRejected):
    """The certificate does not parse (e.g. a duplicated or malformed extension)."""

    reason = RejectReason.MALFORMED_CERTIFICATE


class UnknownIssuer(CertificateRejected):
    """No trusted CA issued this certificate (or one of its issuers)."""

    reason = RejectReason.UNKNOWN_ISSUER


class BadSignature(CertificateRejected):
    """A certificate or CRL signature does not verify under its issuer's key."""

    reason = RejectReason.BAD_SIGNATURE


class CertificateExpired(CertificateRejected):
    """The validity window ended before the time of the check."""

    reason = RejectReason.EXPIRED


class CertificateNotYetValid(CertificateRejected):
    """The validity window starts after the time of the check."""

    reason = RejectReason.NOT_YET_VALID


class CertificateRevoked(CertificateRejected):
    """The issuer's CRL lists this certificate."""

    reason = RejectReason.REVOKED


class CrlMissing(CertificateRejected):
    """CRL checking is required but the issuer has no CRL in the trust directory."""

    reason = RejectReason.CRL_MISSING


class CrlExpired(CertificateRejected):
    """The issuer's CRL is past its nextUpdate (run fetch-crl or `zmqsec keys crl`)."""

    reason = RejectReason.CRL_EXPIRED


class CrlNotYetValid(CertificateRejected):
    """The issuer's CRL has a thisUpdate in the future."""

    reason = RejectReason.CRL_NOT_YET_VALID


class NotACertificateAuthority(CertificateRejected):
    """A certificate in the issuer position is not allowed to issue certificates."""

    reason = RejectReason.NOT_A_CA


class PathTooLong(CertificateRejected):
    """A CA's pathLenConstraint is exceeded."""

    reason = RejectReason.PATH_TOO_LONG


class WrongKeyUsage(CertificateRejected):
    """keyUsage or extendedKeyUsage do not allow what the certificate is used for."""

    reason = RejectReason.WRONG_KEY_USAGE


class UnhandledCriticalExtension(CertificateRejected):
    """A critical extension this validator does not understand is present."""

    reason = RejectReason.UNHANDLED_CRITICAL_EXTENSION


class SignerNotAllowed(CertificateRejected):
    """The subject DN is not on the allow-list."""

    reason = RejectReason.DN_NOT_ALLOWED
