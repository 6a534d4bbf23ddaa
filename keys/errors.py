"""Error types of the trust layer.

Every refusal is a specific exception whose message is one line that names
the file or option at fault and, where there is one, the fix.  The CLI maps
:class:`ZmqsecError` to an exit code in one place; anything else is a bug.
"""

from __future__ import annotations


class ZmqsecError(Exception):
    """Root of every error zmqsec reports to a user (one line, no traceback)."""


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

    reason = "rejected"

    def __init__(self, message: str, *, depth: int = 0) -> None:
        super().__init__(message)
        self.depth = depth


class MalformedCertificate(CertificateRejected):
    """The certificate does not parse (e.g. a duplicated or malformed extension)."""

    reason = "malformed-certificate"


class UnknownIssuer(CertificateRejected):
    """No trusted CA issued this certificate (or one of its issuers)."""

    reason = "unknown-issuer"


class BadSignature(CertificateRejected):
    """A certificate or CRL signature does not verify under its issuer's key."""

    reason = "bad-signature"


class CertificateExpired(CertificateRejected):
    """The validity window ended before the time of the check."""

    reason = "expired"


class CertificateNotYetValid(CertificateRejected):
    """The validity window starts after the time of the check."""

    reason = "not-yet-valid"


class CertificateRevoked(CertificateRejected):
    """The issuer's CRL lists this certificate."""

    reason = "revoked"


class CrlMissing(CertificateRejected):
    """CRL checking is required but the issuer has no CRL in the trust directory."""

    reason = "crl-missing"


class CrlExpired(CertificateRejected):
    """The issuer's CRL is past its nextUpdate (run fetch-crl or `zmqsec keys crl`)."""

    reason = "crl-expired"


class CrlNotYetValid(CertificateRejected):
    """The issuer's CRL has a thisUpdate in the future."""

    reason = "crl-not-yet-valid"


class NotACertificateAuthority(CertificateRejected):
    """A certificate in the issuer position is not allowed to issue certificates."""

    reason = "not-a-ca"


class PathTooLong(CertificateRejected):
    """A CA's pathLenConstraint is exceeded."""

    reason = "path-too-long"


class WrongKeyUsage(CertificateRejected):
    """keyUsage or extendedKeyUsage do not allow what the certificate is used for."""

    reason = "wrong-key-usage"


class UnhandledCriticalExtension(CertificateRejected):
    """A critical extension this validator does not understand is present."""

    reason = "unhandled-critical-extension"


class SignerNotAllowed(CertificateRejected):
    """The subject DN is not on the allow-list."""

    reason = "dn-not-allowed"
