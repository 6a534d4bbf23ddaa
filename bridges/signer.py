"""EMI bodies made on every core: sign first, then (optionally) encrypt, as the EMI protocol orders it.

``workers`` processes (:mod:`.workers`) make a batch's bodies in parallel,
returned in the order taken; with one worker the bridge makes them in its own
process.  A worker receives the certificate and key from the bridge at start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.keys.pemfiles import Credential

from . import smime
from .workers import Workers


class BodyMaker:
    """Makes S/MIME bodies: signed by ``credential``, encrypted to ``server_certs`` when there are any."""

    def __init__(self, credential: Credential, *, digest: str = "sha256",
                 server_certs: Sequence[x509.Certificate] = (), cipher: str = "aes256", workers: int = 1) -> None:
        self.credential, self.digest, self.server_certs, self.cipher = credential, digest, tuple(server_certs), cipher
        self.workers = max(1, workers)
        self._pool = None
        if self.workers > 1:
            der = serialization.Encoding.DER
            key = credential.key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            self._pool = Workers(self.workers, _start, (
                [c.public_bytes(der) for c in (credential.certificate, *credential.chain)], key, digest,
                [c.public_bytes(der) for c in self.server_certs], cipher))

    def body(self, content: bytes) -> bytes:
        """One body, in this process."""
        return _body(content, self.credential, self.digest, self.server_certs, self.cipher)

    def submit(self, contents: list[bytes]) -> Callable[[], list[bytes]]:
        """Start making the bodies of ``contents``; returns the call that waits for them (in the same order)."""
        if self._pool is None or len(contents) < 2:
            return lambda: [self.body(c) for c in contents]
        return self._pool.map(_make, contents)

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _body(content: bytes, credential: Credential, digest: str, server_certs: tuple, cipher: str) -> bytes:
    body = smime.sign(content, credential, digest=digest)
    if server_certs:
        body = smime.encrypt(body, server_certs, cipher=cipher)
    return body


_worker: tuple | None = None  # in a worker process: (credential, digest, server certificates, cipher)


def _start(cert_ders: list[bytes], key_der: bytes, digest: str, server_ders: list[bytes], cipher: str) -> None:
    global _worker
    certs = [x509.load_der_x509_certificate(d) for d in cert_ders]
    key = serialization.load_der_private_key(key_der, password=None)
    _worker = (Credential(certs[0], key, tuple(certs[1:])), digest,
               tuple(x509.load_der_x509_certificate(d) for d in server_ders), cipher)


def _make(contents: list[bytes]) -> list[bytes]:
    return [_body(c, *_worker) for c in contents]
