"""EMI bodies made on every core: sign first, then (optionally) encrypt, as the EMI protocol orders it.

One RSA-2048 signature costs about a millisecond of one core, and the GIL keeps
a thread from helping; ``workers`` processes of our own (spawned, so they
share no sockets or threads with the bridge) make a batch's bodies in
parallel, returned in the order taken.  With one worker the bridge makes them
in its own process.  A worker receives the certificate and key over its pipe
from the bridge at start, and nothing else of the bridge's; it ends with the
bridge, also when the bridge is killed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.keys.pemfiles import Credential

from . import smime

MIN_CHUNK = 8  # messages per worker job at least (a job costs a round trip through the pool)


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
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                initargs=(os.getpid(), [c.public_bytes(der) for c in (credential.certificate, *credential.chain)], key, digest,
                          [c.public_bytes(der) for c in self.server_certs], cipher))

    def body(self, content: bytes) -> bytes:
        """One body, in this process."""
        return _body(content, self.credential, self.digest, self.server_certs, self.cipher)

    def submit(self, contents: list[bytes]) -> Callable[[], list[bytes]]:
        """Start making the bodies of ``contents``; returns the call that waits for them (in the same order)."""
        if self._pool is None or len(contents) < 2:
            return lambda: [self.body(c) for c in contents]
        size = max(MIN_CHUNK, -(-len(contents) // self.workers))
        futures = [self._pool.submit(_make, contents[i:i + size]) for i in range(0, len(contents), size)]
        return lambda: [body for future in futures for body in future.result()]

    def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def default_workers() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _body(content: bytes, credential: Credential, digest: str, server_certs: tuple, cipher: str) -> bytes:
    body = smime.sign(content, credential, digest=digest)
    if server_certs:
        body = smime.encrypt(body, server_certs, cipher=cipher)
    return body


_worker: tuple | None = None  # in a worker process: (credential, digest, server certificates, cipher)


def _start(parent: int, cert_ders: list[bytes], key_der: bytes, digest: str, server_ders: list[bytes],
           cipher: str) -> None:
    global _worker
    _die_with(parent)
    certs = [x509.load_der_x509_certificate(d) for d in cert_ders]
    key = serialization.load_der_private_key(key_der, password=None)
    _worker = (Credential(certs[0], key, tuple(certs[1:])), digest,
               tuple(x509.load_der_x509_certificate(d) for d in server_ders), cipher)


def _die_with(parent: int) -> None:
    """End this worker when the bridge ends, also by kill -9 (Linux: PR_SET_PDEATHSIG); a worker whose bridge is
    gone already ends at once.  Without this, a killed bridge left its workers waiting forever."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _make(contents: list[bytes]) -> list[bytes]:
    return [_body(c, *_worker) for c in contents]
