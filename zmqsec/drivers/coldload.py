"""A cold load of a large reader registry, parsed and validated in worker processes, one per core.

:meth:`ReaderRegistry.load` takes this module's :func:`prejudge`: where
PARALLEL_FROM or more certificates are new, or not accepted by the load's
cache, it hands them to fresh interpreters (a publisher has threads and a
ZeroMQ context that a forked child must not inherit), each given the trust
store's CA certificates and CRLs and its share of the file names on stdin
(msgpack), and answering each file's stat key, DER and verdict on stdout.
What they accepted goes into the cache; the load's own pass then finds it
there, and judges itself what they refused or could not read (for its
messages).  A worker that fails leaves its share to that pass.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import subprocess
import sys

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmqsec.keys.errors import CertificateRejected, KeyFileError
from zmqsec.keys.pemfiles import load_certificate
from zmqsec.keys.registry import LoadCache, Reader, ReaderRegistry, stat_key
from zmqsec.keys.trust import CrlPolicy, TrustStore, Usage

log = logging.getLogger("zmqsec.keys")

PARALLEL_FROM = 2000  # certificates to parse or validate at which a load spreads over the cores


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prejudge(registry: ReaderRegistry, names: list[str], cache: LoadCache, trust: TrustStore, at, now: dt.datetime,
             options: dict) -> None:
    """Fill ``cache`` with the verdicts of worker processes (see the module docstring)."""
    n = cores()
    if n < 2 or len(names) < PARALLEL_FROM or set(options) - {"crl", "crl_all"}:
        return
    todo = [name for name in names if (hit := cache.parsed.get(name)) is None
            or not now < cache.accepted.get(hit[1].fingerprint, now)]
    if len(todo) < PARALLEL_FROM:
        return
    der = serialization.Encoding.DER
    job = {"directory": str(registry.directory), "cas": [c.public_bytes(der) for c in trust.ca_certificates],
           "crls": [crl.public_bytes(der) for group in trust.crls.values() for crl in group],
           "at": None if at is None else at.timestamp(),
           "crl": CrlPolicy(options.get("crl", CrlPolicy.REQUIRE)).value, "crl_all": bool(options.get("crl_all"))}
    workers = [(subprocess.Popen([sys.executable, "-c", "from zmqsec.drivers.coldload import worker_main; "
                                  "worker_main()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE),
                msgpack.packb({**job, "names": todo[i::n]})) for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as talk:  # each pipe written and read at once
        outputs = list(talk.map(lambda pair: pair[0].communicate(pair[1])[0], workers))
    for (worker, _), out in zip(workers, outputs):
        try:
            if worker.returncode != 0:
                raise ValueError(f"exit status {worker.returncode}")
            judged = msgpack.unpackb(out)
        except ValueError as exc:
            log.warning("reader registry: a worker of a parallel load failed (%s); its share is loaded here", exc)
            continue
        for name, key, data, until in judged:
            reader = Reader(x509.load_der_x509_certificate(data), registry.directory / name)
            cache.parsed[name] = (tuple(key), reader)
            if until is not None:
                cache.accepted[reader.fingerprint] = dt.datetime.fromtimestamp(until, dt.timezone.utc)


def judge_files(job: dict) -> list:
    """Parse and validate each file of ``job``: [name, stat key, DER, accepted until as a POSIX time or None].
    Unreadable files are left out and refusals give None: the load's own pass judges both again."""
    trust = TrustStore.from_certificates([x509.load_der_x509_certificate(d) for d in job["cas"]],
                                         [x509.load_der_x509_crl(d) for d in job["crls"]])
    at = None if job["at"] is None else dt.datetime.fromtimestamp(job["at"], dt.timezone.utc)
    options = {"crl": CrlPolicy(job["crl"]), "crl_all": job["crl_all"]}
    judged = []
    for name in job["names"]:
        path = os.path.join(job["directory"], name)
        try:
            key = stat_key(path)
            cert = load_certificate(path)
        except (KeyFileError, OSError):
            continue
        try:
            trust.validate(cert, usage=Usage.ENCRYPT, at=at, **options)
            until = min(cert.not_valid_after_utc, trust.valid_until).timestamp()
        except CertificateRejected:
            until = None
        judged.append([name, list(key), cert.public_bytes(serialization.Encoding.DER), until])
    return judged


def worker_main() -> None:
    """A worker process: a job on stdin, its verdicts on stdout (msgpack)."""
    job = msgpack.unpackb(sys.stdin.buffer.read())
    sys.stdout.buffer.write(msgpack.packb(judge_files(job)))
