"""EMI messages opened on every core: decrypted when enveloped for us, and their signature checked.

Opening is stomp-in's CPU work (an RSA private-key operation to decrypt, the
CMS parsing, the signature); whether the signer is acceptable (chain, CRLs, DN
list) is decided afterwards, in the bridge, against the trust it watches.
``workers`` processes (:mod:`.workers`) open a batch in parallel, results in the
order taken; with one worker the bridge opens in its own process.  A message
that cannot be opened is an :class:`Unopened` with its reason, never an
exception across the pipe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.crypto import cms
from zmqsec.errors import RejectReason
from zmqsec.keys.pemfiles import Credential

from . import smime
from .workers import Workers

log = logging.getLogger("zmqsec.bridge.in")


@dataclass(frozen=True)
class Unopened:
    """A message refused before its signer is known: the reason (from the one list) and what was wrong."""

    reason: RejectReason
    detail: str


class Opener:
    """Opens S/MIME messages with ``credential`` (ours: the key enveloped messages are for)."""

    def __init__(self, credential: Credential, *, max_bytes: int, workers: int = 1) -> None:
        self.credential, self.max_bytes = credential, max_bytes
        self._pool = None
        if workers > 1:
            der = serialization.Encoding.DER
            key = credential.key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            self._pool = Workers(workers, _start, (credential.certificate.public_bytes(der), key, max_bytes))

    def open(self, bodies: Sequence[bytes]) -> Callable[[], list[smime.Opened | Unopened]]:
        """Start opening ``bodies``; returns the call that waits for the outcomes (in the same order)."""
        if self._pool is None or len(bodies) < 2:
            return lambda: [open_one(body, self.credential, self.max_bytes) for body in bodies]
        wait = self._pool.map(_open_chunk, bodies)
        return lambda: [_from_wire(outcome) for outcome in wait()]

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def open_one(body: bytes, credential: Credential, max_bytes: int) -> smime.Opened | Unopened:
    """Open one message, or say why it cannot be opened."""
    try:
        if len(body) > max_bytes:
            raise smime.MessageTooLarge(f"message of {len(body)} bytes exceeds {max_bytes}")
        return smime.open_message(body, credential)
    except cms.CmsError as exc:
        return Unopened(exc.reason, str(exc))
    except Exception as exc:  # a bug of ours must not stop the bridge nor lose the message
        log.exception("unexpected error while opening a message")
        return Unopened(RejectReason.INTERNAL_ERROR, exc.__class__.__name__)


# Across the pipe an opened message travels with its certificates as DER (certificates do not pickle):
# ("opened", content, certificate DERs, index of the signer's, digest, encrypted).
_Wire = tuple

_worker: tuple | None = None  # in a worker process: (credential, max_bytes)


def _start(cert_der: bytes, key_der: bytes, max_bytes: int) -> None:
    global _worker
    certificate = x509.load_der_x509_certificate(cert_der)
    _worker = (Credential(certificate, serialization.load_der_private_key(key_der, password=None)), max_bytes)


def _open_chunk(bodies: list[bytes]) -> list[_Wire | Unopened]:
    out = []
    for body in bodies:
        try:
            out.append(_to_wire(open_one(body, *_worker)))
        except Exception as exc:  # as in open_one: one message's trouble is that message's refusal
            log.exception("unexpected error while passing an opened message on")
            out.append(Unopened(RejectReason.INTERNAL_ERROR, exc.__class__.__name__))
    return out


def _to_wire(outcome: smime.Opened | Unopened) -> _Wire | Unopened:
    if isinstance(outcome, Unopened):
        return outcome
    der = serialization.Encoding.DER
    # The signer is one of the certificates: verification finds it among those embedded.
    return ("opened", outcome.content, [c.public_bytes(der) for c in outcome.certificates],
            outcome.certificates.index(outcome.signer), outcome.digest, outcome.encrypted)


def _from_wire(outcome: _Wire | Unopened) -> smime.Opened | Unopened:
    if isinstance(outcome, Unopened):
        return outcome
    _, content, ders, signer, digest, encrypted = outcome
    certificates = tuple(x509.load_der_x509_certificate(d) for d in ders)
    return smime.Opened(content, certificates[signer], certificates, digest, encrypted)
