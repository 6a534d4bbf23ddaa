"""The root of zmqsec's error types and the one list of refusal reasons, below every layer.

Every refusal is a specific exception (or a ``Rejected`` event) carrying a
:class:`RejectReason`; daemons log it, count it under that name and carry on.
A user-facing error is one line that names the file or option at fault and,
where there is one, the fix.  The CLI maps :class:`ZmqsecError` to an exit
code in one place; anything else is a bug.
"""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Why something was refused: the counter names of status files and the bracketed names of
    docs/PROTOCOL.md.  A refusal about an announcement's signer or envelope is counted with a
    scope prefix (:class:`Scope`): ``publisher-revoked``, ``announcement-bad-signature``."""

    # frames (PROTOCOL.md §3)
    BAD_PARTS = "bad-parts"
    BAD_TOPIC = "bad-topic"
    UNKNOWN_KIND = "unknown-kind"
    OVERSIZED = "oversized"
    BAD_MSGPACK = "bad-msgpack"
    UNKNOWN_VERSION = "unknown-version"
    BAD_FIELD = "bad-field"
    BAD_SUBSCRIPTION = "bad-subscription"
    TOO_MANY_SUBSCRIPTIONS = "too-many-subscriptions"
    SHUT_OUT = "shut-out"
    # key announcements (§4)
    KEY_CONFIRMATION = "key-confirmation"
    HEADER_MISMATCH = "header-mismatch"
    NOT_A_RECIPIENT = "not-a-recipient"
    NO_GROUP_KEY = "no-group-key"
    NO_TREE_KEY = "no-tree-key"
    STALE_EPOCH = "stale-epoch"
    STALE_GROUP_KEY = "stale-group-key"
    STALE_RESTART = "stale-restart"
    PUBLISHER_CHANGED = "publisher-changed"
    # data and checkpoints (§5, §6.2)
    NO_KEY = "no-key"
    DECRYPT_FAILED = "decrypt-failed"
    BAD_CHECKPOINT = "bad-checkpoint"
    BAD_RUN = "bad-run"
    UNVERIFIED = "unverified"
    FORGED = "forged"
    DUPLICATE = "duplicate"
    REPLAYED_SEQUENCE = "replayed-sequence"
    RETIRED_STREAM = "retired-stream"
    OVERLOADED = "overloaded"
    # CMS structures
    CMS_ERROR = "cms-error"
    MALFORMED_CMS = "malformed-cms"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    DECRYPTION_FAILED = "decryption-failed"
    BAD_SIGNATURE = "bad-signature"
    NO_SIGNER_CERTIFICATE = "no-signer-certificate"
    # certificates (the trust layer; openssl verify's checks)
    REJECTED = "rejected"
    MALFORMED_CERTIFICATE = "malformed-certificate"
    UNKNOWN_ISSUER = "unknown-issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    CRL_MISSING = "crl-missing"
    CRL_EXPIRED = "crl-expired"
    CRL_NOT_YET_VALID = "crl-not-yet-valid"
    NOT_A_CA = "not-a-ca"
    PATH_TOO_LONG = "path-too-long"
    WRONG_KEY_USAGE = "wrong-key-usage"
    UNHANDLED_CRITICAL_EXTENSION = "unhandled-critical-extension"
    DN_NOT_ALLOWED = "dn-not-allowed"
    # the reader registry
    UNREADABLE = "unreadable"
    UNSUPPORTED_KEY = "unsupported-key"
    # S/MIME messages (the EMI bridge)
    MALFORMED_SMIME = "malformed-smime"
    UNSIGNED = "unsigned"
    # storage
    NOT_UTF8 = "not-utf8"
    INTERNAL_ERROR = "internal-error"


class Scope(enum.StrEnum):
    """What part of a key announcement a wrapped refusal was about."""

    ANNOUNCEMENT = "announcement"  # its CMS signature
    PUBLISHER = "publisher"  # the signer's certificate
    ENVELOPE = "envelope"  # its CMS envelope


def scoped(scope: Scope, reason: RejectReason) -> str:
    """The counter name of a wrapped refusal: ``publisher-revoked``."""
    return f"{scope}-{reason}"


class ZmqsecError(Exception):
    """Root of every error zmqsec reports to a user (one line, no traceback)."""


class ConfigError(ZmqsecError):
    """A configuration file or option is missing or malformed."""
