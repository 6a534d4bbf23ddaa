"""``zmqsec bench``: zmqsec measured beside the baselines a user would compare it with, in one run.

Four measurements on the same machine, each figure a median over repetitions and each
comparison a ratio of figures taken in the same run (docs/performance.md explains them):

* **stream** -- plain pyzmq PUB/SUB against a zmqsec ``Publisher``/``Subscriber``, publisher and
  reader in separate processes over tcp loopback: messages/s, MB/s, and the latency from
  ``publish()`` to the delivery of a verified message at a fixed rate;
* **rekey** -- revoking one of N readers: the publisher's rekey, the time until sampled readers
  hold the new key, and the bytes each reader must receive, single-envelope and grouped;
* **bridge** -- EMI S/MIME messages into ActiveMQ with receipts: the bridge's in-process path
  against one ``openssl smime`` process per sign and per encrypt (APEL SSM's way);
* **memory** -- peak RSS of a publisher holding many readers, and of a reader.

Results go to a JSON file with PNG plots beside it.  The bridge's classes are handed in by the
CLI (:class:`BridgeParts`): the stream package never imports the bridges (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import datetime as dt
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.ca import CertificateAuthority, Role, generate_key
from keys.dn import DnAllowList, parse_slash_dn, slash_dn
from keys.errors import ZmqsecError
from keys.pemfiles import Credential, load_certificate, load_private_key, write_private_key
from keys.registry import LoadCache, Reader, ReaderRegistry, ReaderSet
from keys.trust import TrustStore

from .publisher import Publisher
from .receiver import Delivered, KeyAccepted, StreamReceiver
from .sender import RotationPolicy, StreamSender
from .subscriber import Subscriber

log = logging.getLogger("zmqsec.bench")

STREAM = "bench"
PLAIN, ZMQSEC = "plain", "zmqsec"
SINGLE, GROUPED = "single-envelope", "grouped"
SECTIONS = ("stream", "rekey", "bridge", "memory")
SHARED_READER_KEYS = 4  # reader certificates share these key pairs; each is still its own CMS recipient
HWM = 100_000  # both systems: the zmqsec Publisher's default SNDHWM and the Subscriber's RCVHWM


class BenchError(ZmqsecError):
    """A benchmark step could not run (a worker died, a broker did not start, a reader got no key)."""


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How much of everything one run measures."""

    name: str
    stream_payloads: tuple[int, ...]  # bytes
    stream_seconds: float  # per repetition: each system sends what its warm-up rate says fills this
    stream_reps: int
    latency_rate: int  # messages/s of the paced latency run
    latency_messages: int
    rekey_readers: tuple[int, ...]
    rekey_reps: int  # revocations per reader count and mode
    rekey_sample: int  # readers whose switch to the new key is timed
    single_caps: tuple[tuple[int, int, int], ...]  # (readers, revocations, sample): single-envelope limits
    registry_reps: int
    bridge_bodies: tuple[int, ...]
    bridge_messages: int  # per repetition, in-process bridge
    bridge_openssl_messages: int  # per repetition, openssl CLI (fewer: each message costs processes)
    bridge_reps: int
    memory_readers: int
    memory_messages: int
    memory_rate: int


QUICK = Profile(
    name="quick", stream_payloads=(1024, 65536), stream_seconds=0.6, stream_reps=3, latency_rate=1000,
    latency_messages=600, rekey_readers=(10, 100, 1000), rekey_reps=3, rekey_sample=5,
    single_caps=((1000, 1, 2),), registry_reps=1, bridge_bodies=(1024, 65536), bridge_messages=60,
    bridge_openssl_messages=10, bridge_reps=3, memory_readers=1000, memory_messages=300, memory_rate=200)
FULL = Profile(
    name="full", stream_payloads=(1024, 65536), stream_seconds=3.0, stream_reps=5, latency_rate=1000,
    latency_messages=5000, rekey_readers=(10, 100, 1000, 10_000), rekey_reps=3, rekey_sample=5,
    single_caps=((10_000, 3, 3),), registry_reps=3, bridge_bodies=(1024, 65536), bridge_messages=300,
    bridge_openssl_messages=60, bridge_reps=5, memory_readers=10_000, memory_messages=2000, memory_rate=500)


@dataclass(frozen=True)
class BenchConfig:
    """One run: which profile, where results go, which broker (None: start a private one)."""

    profile: Profile
    out: Path
    broker: tuple[str, int] | None = None
    sections: tuple[str, ...] = SECTIONS
    group_size: int | None = None  # None: about the square root of the reader count
    workdir: Path | None = None  # None: a temporary directory, removed afterwards
    plots: bool = True


@dataclass(frozen=True)
class BridgeParts:
    """The STOMP bridge's classes, handed in by the CLI: the stream package does not import the bridges."""

    broker_config: Callable  # bridges.activemq.BrokerConfig
    local_broker: Callable  # bridges.activemq.LocalBroker
    broker_settings: Callable  # bridges.stomplink.BrokerSettings
    stomp_link: Callable  # bridges.stomplink.StompLink
    outbox: Callable  # bridges.outbox.Outbox
    out_settings: Callable  # bridges.stomp_out.OutSettings
    out_bridge: Callable  # bridges.stomp_out.StompOutBridge


# -- small statistics -------------------------------------------------------------------


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else 0.0


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


def _rss() -> dict:
    """Peak and current resident set of this process, in MB (10^6 bytes)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[{"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb"}[name]] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return out


def _round(value, digits: int = 4):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


# -- PKI: a throw-away CA, a publisher, readers sharing a few key pairs, a bridge and a server ----------------


@dataclass(frozen=True)
class Pki:
    """Certificate and key files of one run (paths, so worker processes can load them)."""

    directory: Path
    ca_dir: Path
    trust_dir: Path
    publisher_cert: Path
    publisher_key: Path
    publisher_dn: str
    reader_certs: tuple[Path, ...]
    reader_keys: tuple[Path, ...]  # reader i uses reader_keys[i % len(reader_keys)]
    bridge_cert: Path
    bridge_key: Path
    server_cert: Path

    def reader(self, i: int) -> tuple[Path, Path]:
        return self.reader_certs[i], self.reader_keys[i % len(self.reader_keys)]

    def registry(self, readers: int, name: str) -> Path:
        """A registry directory holding the first ``readers`` reader certificates (hard links)."""
        path = self.directory / "registries" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for cert in self.reader_certs[:readers]:
            os.link(cert, path / cert.name)
        return path


def make_pki(directory: Path, readers: int) -> Pki:
    """Issue everything a run needs; reader certificates share a few RSA key pairs so set-up stays quick."""
    ca = CertificateAuthority.init(directory / "ca", subject=parse_slash_dn("/O=zmqsec bench/CN=zmqsec bench CA"),
                                   rsa_bits=2048)
    certs = directory / "certs"
    publisher = ca.issue(role=Role.PUBLISHER, cn="publisher.bench", out_dir=certs)
    bridge = ca.issue(role=Role.BRIDGE, cn="bridge.bench", out_dir=certs)
    server = ca.issue(role=Role.SERVER, cn="apel.bench", out_dir=certs)
    keys = []
    for k in range(SHARED_READER_KEYS):
        path = directory / "reader-keys" / f"shared-{k}.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_key(path, generate_key())
        keys.append(path)
    loaded = [load_private_key(p) for p in keys]
    reader_certs = []
    for i in range(readers):
        # issue() also writes a copy of the shared key beside each certificate; we use the shared files.
        issued = ca.issue(role=Role.READER, cn=f"reader-{i:05d}.bench", key=loaded[i % len(loaded)],
                          out_dir=directory / "readers")
        reader_certs.append(issued.cert_path)
    return Pki(directory, ca.directory, ca.trust_dir, publisher.cert_path, publisher.key_path, slash_dn(publisher.certificate.subject),
               tuple(reader_certs), tuple(keys), bridge.cert_path, bridge.key_path, server.cert_path)


def grouped_api() -> bool:
    """Does this tree have the grouped key hierarchy (``RotationPolicy(group_size=...)``, ``zmqsec.groups``)?"""
    return ("group_size" in {f.name for f in dataclasses.fields(RotationPolicy)}
            and importlib.util.find_spec("zmqsec.groups") is not None)


def _policy(group_size: int) -> RotationPolicy:
    return RotationPolicy(group_size=group_size) if group_size else RotationPolicy()


def _reader_topics(group_size: int, certificate) -> tuple[bytes, ...]:
    """Subscription prefixes of a reader: the whole stream, or its groups' topics in grouped mode."""
    if not group_size:
        return (STREAM.encode() + b"\x00",)
    from . import groups

    return tuple(groups.reader_topics(STREAM, certificate))


def auto_group_size(readers: int) -> int:
    """About the square root of the reader count: balances the group-key envelope (one CMS
    recipient per group member) against the epoch envelope (one wrap per group)."""
    return max(2, round(readers ** 0.5))


# -- worker processes ------------------------------------------------------------------
#
# Publisher and reader run in processes of their own (multiprocessing, spawn), driven by the
# parent over a pipe.  Wall-clock nanoseconds (CLOCK_REALTIME, one machine) are the only times
# compared across processes: a payload starts with its send time, so a reader measures latency.


@dataclass(frozen=True)
class StreamSpec:
    """What a stream worker needs (picklable)."""

    system: str
    trust_dir: Path
    publisher_cert: Path
    publisher_key: Path
    publisher_dn: str
    registry: Path | None = None
    reader_cert: Path | None = None
    reader_key: Path | None = None
    endpoint: str = "tcp://127.0.0.1:*"
    group_size: int = 0


def _payload(size: int, filler: bytes, ts_ns: int) -> bytes:
    return ts_ns.to_bytes(8, "big") + filler[8:size]


class _PlainPublisher:
    """An XPUB socket (a PUB that also shows subscriptions, as zmqsec's Publisher uses), nothing else."""

    def __init__(self, spec: StreamSpec) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, HWM)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.bind(spec.endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.topic = STREAM.encode() + b"\x00D"
        self.subscriptions = 0
        self.epoch = 0
        self.watch_interval = None

    def idle(self, seconds: float) -> None:
        if self.socket.poll(max(0, int(seconds * 1000)), zmq.POLLIN):
            while self.socket.poll(0, zmq.POLLIN):
                if self.socket.recv()[:1] == b"\x01":
                    self.subscriptions += 1

    def publish(self, payload: bytes) -> None:
        self.socket.send_multipart([self.topic, payload], copy=False)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.socket.close()


class _ZmqsecPublisher:
    def __init__(self, spec: StreamSpec) -> None:
        self.publisher = Publisher(STREAM, [spec.endpoint], Credential.load(spec.publisher_cert, spec.publisher_key),
                                   ReaderRegistry(spec.registry), trust_dir=spec.trust_dir, policy=_policy(spec.group_size),
                                   sndhwm=HWM)
        self.endpoint = self.publisher.endpoints[0]

    @property
    def subscriptions(self) -> int:
        return self.publisher.subscriptions

    @property
    def epoch(self) -> int:
        return self.publisher.sender.epoch

    @property
    def watch_interval(self) -> float:
        return self.publisher.watch_interval

    def idle(self, seconds: float) -> None:
        self.publisher.run_idle(seconds)  # checkpoints, re-announcements and the registry watch, on time

    def publish(self, payload: bytes) -> None:
        self.publisher.publish(payload)

    def finish(self) -> None:
        self.publisher.flush()  # the checkpoint that vouches for the last messages

    def close(self) -> None:
        self.publisher.close()


class _PlainReader:
    def __init__(self, spec: StreamSpec) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, STREAM.encode() + b"\x00")
        self.socket.connect(spec.endpoint)

    def wait_ready(self, timeout: float) -> bool:
        return True  # only the publisher sees when the subscription has arrived

    def next(self, timeout: float) -> bytes | None:
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK)[1]
        except zmq.Again:
            if not self.socket.poll(max(1, int(timeout * 1000)), zmq.POLLIN):
                return None
            return self.socket.recv_multipart(zmq.NOBLOCK)[1]

    def problems(self) -> dict:
        return {}

    def close(self) -> None:
        self.socket.close()


class _ZmqsecReader:
    def __init__(self, spec: StreamSpec) -> None:
        self.gaps = 0
        self.subscriber = Subscriber(STREAM, [spec.endpoint], Credential.load(spec.reader_cert, spec.reader_key),
                                     spec.trust_dir, allowed_publishers=DnAllowList(frozenset({spec.publisher_dn})),
                                     on_gap=self._gap)
        self.early: list[bytes] = []

    def _gap(self, gap) -> None:
        self.gaps += gap.count

    def wait_ready(self, timeout: float) -> bool:
        """Until the reader holds the epoch key (slow joiner: nothing may be published before)."""
        deadline = time.monotonic() + timeout
        while self.subscriber.events.epoch == 0 and time.monotonic() < deadline:
            message = self.subscriber.receive(timeout=0.05)
            if message is not None:
                self.early.append(message.payload)
        return self.subscriber.events.epoch > 0

    def next(self, timeout: float) -> bytes | None:
        message = self.subscriber.receive(timeout=timeout)
        return message.payload if message is not None else None

    def problems(self) -> dict:
        rejected = {k: v for k, v in self.subscriber.counters.items() if k.startswith("rejected:")}
        return {"gaps": self.gaps, **rejected}

    def close(self) -> None:
        self.subscriber.close()


def _publisher_worker(conn, spec: StreamSpec) -> None:
    """Publisher process: bind, then obey the parent's commands; between them keep the stream serviced."""
    started = time.perf_counter()
    side = (_ZmqsecPublisher if spec.system == ZMQSEC else _PlainPublisher)(spec)
    conn.send(("bound", side.endpoint, time.perf_counter() - started, _rss()))
    filler = os.urandom(1 << 17)
    while True:
        while not conn.poll(0):
            side.idle(0.02)
        command, *args = conn.recv()
        if command == "subscribers":
            wanted, timeout = args
            deadline = time.monotonic() + timeout
            while side.subscriptions < wanted and time.monotonic() < deadline:
                side.idle(0.02)
            conn.send(("subscribed", side.subscriptions >= wanted))
        elif command == "burst":
            count, size = args
            t0 = time.time_ns()
            for _ in range(count):
                side.publish(_payload(size, filler, time.time_ns()))
            side.finish()
            conn.send(("sent", t0, time.time_ns()))
        elif command == "paced":
            count, size, rate = args
            interval, start, t0 = 1.0 / rate, time.perf_counter(), time.time_ns()
            for i in range(count):
                due = start + i * interval
                while (left := due - time.perf_counter()) > 0:
                    side.idle(left)
                side.publish(_payload(size, filler, time.time_ns()))
            side.finish()
            conn.send(("sent", t0, time.time_ns()))
        elif command == "revoke":
            # A revocation request as an operator makes it: the certificate leaves the registry directory.
            path, timeout = args
            epoch = side.epoch
            t0 = time.perf_counter()
            os.unlink(path)
            while side.epoch == epoch and time.perf_counter() - t0 < timeout:
                side.idle(0.005)
            conn.send(("revoked", time.perf_counter() - t0, side.epoch, epoch, side.watch_interval))
        elif command == "revoke-crl":
            # The other way an operator revokes: `zmqsec keys revoke` puts the certificate on the CRL.
            ca_dir, path, timeout = args
            epoch = side.epoch
            t0 = time.perf_counter()
            CertificateAuthority.open(ca_dir).revoke(load_certificate(path))
            while side.epoch == epoch and time.perf_counter() - t0 < timeout:
                side.idle(0.005)
            conn.send(("revoked", time.perf_counter() - t0, side.epoch, epoch, side.watch_interval))
        elif command == "stop":
            side.close()
            conn.send(("stopped", _rss()))
            return


def _reader_worker(conn, spec: StreamSpec) -> None:
    """Reader process: connect, wait for the key (zmqsec), then count and time what is delivered."""
    side = (_ZmqsecReader if spec.system == ZMQSEC else _PlainReader)(spec)
    conn.send(("ready", side.wait_ready(60.0)))
    while True:
        command, *args = conn.recv()
        if command == "expect":
            count, idle_timeout, latency = args
            got, first, last, latencies = 0, 0, 0, []
            while got < count:
                payload = side.next(idle_timeout)
                if payload is None:
                    break
                now = time.time_ns()
                first = first or now
                last = now
                got += 1
                if latency:
                    latencies.append((now - int.from_bytes(payload[:8], "big")) / 1e6)
            conn.send(("got", got, first, last, latencies, side.problems()))
        elif command == "stop":
            side.close()
            conn.send(("stopped", _rss()))
            return


class _Worker:
    """A spawned process and the parent's end of its pipe."""

    def __init__(self, ctx, target, *args) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    def call(self, *command, timeout: float = 600.0):
        if command:
            self.conn.send(command)
        return self.receive(timeout)

    def receive(self, timeout: float = 600.0):
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise BenchError(f"worker {self.process.name} exited with code {self.process.exitcode}")
            if time.monotonic() > deadline:
                raise BenchError(f"worker {self.process.name}: no answer within {timeout:.0f}s")
        return self.conn.recv()

    def stop(self) -> dict:
        try:
            if self.process.is_alive():
                return self.call("stop", timeout=30)[1]
        except (BenchError, OSError, EOFError):
            pass
        finally:
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        return {}


class StreamPair:
    """One publisher process and one reader process of one system, connected and ready."""

    def __init__(self, ctx, spec: StreamSpec) -> None:
        self.system = spec.system
        self.publisher = _Worker(ctx, _publisher_worker, spec)
        self.reader = None
        try:
            _, endpoint, self.setup_s, self.publisher_rss = self.publisher.receive()
            self.reader = _Worker(ctx, _reader_worker, dataclasses.replace(spec, endpoint=endpoint))
            if not self.publisher.call("subscribers", 1, 60.0)[1]:
                raise BenchError(f"{spec.system}: the reader's subscription never reached the publisher")
            if not self.reader.receive()[1]:
                raise BenchError(f"{spec.system}: the reader got no key within 60s")
        except BaseException:
            self.stop()
            raise

    def run(self, command: str, count: int, size: int, *extra, latency: bool = False, idle_timeout: float = 10.0):
        """Publish ``count`` messages; returns (delivered, seconds from first send to last delivery, latencies, problems)."""
        self.reader.conn.send(("expect", count, idle_timeout, latency))
        _, t0, _ = self.publisher.call(command, count, size, *extra)
        _, got, _, last, latencies, problems = self.reader.receive()
        return got, max(1e-9, (last - t0) / 1e9), latencies, problems

    def stop(self) -> dict:
        rss = {"reader": self.reader.stop() if self.reader else {}}
        rss["publisher"] = self.publisher.stop()
        return rss


MAX_QUEUED_BYTES = 1 << 30  # no burst may queue more than this in the sockets


def _burst_size(rate: float, seconds: float, size: int) -> int:
    """Messages that fill ``seconds`` at ``rate``, within what the queues hold without dropping (both HWMs)."""
    cap = min(int(HWM * 0.9), MAX_QUEUED_BYTES // size)
    return max(min(1000, cap), min(cap, int(rate * seconds)))


def per_message_cpu(pki: Pki, size: int, count: int = 2000, reps: int = 3) -> dict:
    """Where a zmqsec message's time goes: the sender's and the receiver's state machines alone, in
    one process, no sockets (microseconds per message, checkpoints included)."""
    reader_cert, reader_key = pki.reader(0)
    payload = os.urandom(size)
    publish, receive = [], []
    for _ in range(reps):
        sender = StreamSender(STREAM, Credential.load(pki.publisher_cert, pki.publisher_key),
                              ReaderSet((Reader(load_certificate(reader_cert)),)), RotationPolicy())
        receiver = StreamReceiver(Credential.load(reader_cert, reader_key), TrustStore.from_directory(pki.trust_dir),
                                  allowed_publishers=DnAllowList(frozenset({pki.publisher_dn})))
        now = time.monotonic()
        for message in sender.start(now):
            receiver.frame_received(message, now)
        messages = []
        t0 = time.perf_counter()
        for _ in range(count):
            messages += sender.publish(payload, now)
        messages += sender.flush(now)
        publish.append((time.perf_counter() - t0) / count * 1e6)
        delivered = 0
        t0 = time.perf_counter()
        for message in messages:
            delivered += sum(1 for e in receiver.frame_received(message, now) if isinstance(e, Delivered))
        receive.append((time.perf_counter() - t0) / count * 1e6)
        if delivered != count:
            raise BenchError(f"in-process stream delivered {delivered} of {count}")
    return {"zmqsec_publish_cpu_us": median(publish), "zmqsec_receive_cpu_us": median(receive),
            **primitive_cpu(payload)}


def primitive_cpu(payload: bytes, count: int = 500, reps: int = 3) -> dict:
    """The two passes over every byte that each side makes whatever the code around them costs:
    AES-256-GCM and the SHA-256 frame digest (microseconds per payload)."""
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    timings = {"aes_gcm_us": [], "sha256_us": []}
    for _ in range(reps):
        for name, work in (("aes_gcm_us", lambda: aead.encrypt(nonce, payload, b"")),
                           ("sha256_us", lambda: hashlib.sha256(payload).digest())):
            t0 = time.perf_counter()
            for _ in range(count):
                work()
            timings[name].append((time.perf_counter() - t0) / count * 1e6)
    return {name: median(values) for name, values in timings.items()}


def run_stream(profile: Profile, pki: Pki) -> list[dict]:
    """Plain pyzmq and zmqsec side by side, repetitions interleaved so drift hits both alike."""
    ctx = multiprocessing.get_context("spawn")
    registry = pki.registry(1, "stream")
    reader_cert, reader_key = pki.reader(0)
    base = StreamSpec(PLAIN, pki.trust_dir, pki.publisher_cert, pki.publisher_key, pki.publisher_dn,
                      registry=registry, reader_cert=reader_cert, reader_key=reader_key)
    results = []
    for size in profile.stream_payloads:
        pairs = {}
        try:
            for system in (PLAIN, ZMQSEC):
                pairs[system] = StreamPair(ctx, dataclasses.replace(base, system=system))
            counts = {}
            for system, pair in pairs.items():
                # Warm-up (connections, caches, allocator) that also sizes the bursts: each system
                # sends what fills stream_seconds at its own pace, so both are timed over similar spans.
                got, seconds, _, _ = pair.run("burst", 2000 if size <= 4096 else 300, size)
                counts[system] = _burst_size(got / seconds, profile.stream_seconds, size)
            log.info("stream: %d-byte payloads, %d repetitions of %s", size, profile.stream_reps,
                     " and ".join(f"{c} messages ({s})" for s, c in counts.items()))
            samples = {s: [] for s in pairs}
            delivered = {s: [] for s in pairs}
            problems = {s: {} for s in pairs}
            for _ in range(profile.stream_reps):
                for system, pair in pairs.items():
                    got, seconds, _, issues = pair.run("burst", counts[system], size)
                    samples[system].append(got / seconds)
                    delivered[system].append(got)
                    problems[system] = issues
            latency = {}
            for system, pair in pairs.items():
                _, _, latency[system], _ = pair.run("paced", profile.latency_messages, size, profile.latency_rate,
                                                    latency=True)
        finally:
            rss = {s: p.stop() for s, p in pairs.items()}
        plain, secure = median(samples[PLAIN]), median(samples[ZMQSEC])
        results.append({
            "payload_bytes": size,
            "plain_msgs_per_s": plain, "zmqsec_msgs_per_s": secure,
            "plain_mb_per_s": plain * size / 1e6, "zmqsec_mb_per_s": secure * size / 1e6,
            "msgs_ratio": secure / plain, "mb_ratio": (secure * size) / (plain * size),
            "p50_ms": percentile(latency[ZMQSEC], 50), "p99_ms": percentile(latency[ZMQSEC], 99),
            "plain_p50_ms": percentile(latency[PLAIN], 50), "plain_p99_ms": percentile(latency[PLAIN], 99),
            "latency_rate_per_s": profile.latency_rate, "latency_messages": profile.latency_messages,
            "latency_delivered": {s: len(v) for s, v in latency.items()},
            "messages": counts, "repetitions": profile.stream_reps,
            "dropped": {s: counts[s] * len(v) - sum(v) for s, v in delivered.items()},
            "zmqsec_reader_problems": problems[ZMQSEC],
            "plain_msgs_per_s_samples": samples[PLAIN], "zmqsec_msgs_per_s_samples": samples[ZMQSEC],
            "reader_peak_rss_mb": {s: r["reader"].get("peak_rss_mb") for s, r in rss.items()},
            **per_message_cpu(pki, size),
        })
        log.info("stream %d B: plain %.0f msg/s, zmqsec %.0f msg/s (ratio %.2f), zmqsec latency p50 %.1f ms p99 %.1f ms",
                 size, plain, secure, secure / plain, results[-1]["p50_ms"], results[-1]["p99_ms"])
    return results


# -- rekey ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RekeySpec:
    readers: int
    group_size: int  # 0: single envelope
    reps: int
    sample: int
    seed: int
    pki: Pki


def _feed(receiver: StreamReceiver, messages, epoch: int) -> tuple[bool, float]:
    """Hand a reader what it receives; (did it accept ``epoch``'s key, seconds until it did)."""
    t0 = time.perf_counter()
    accepted, took = False, 0.0
    for message in messages:
        for event in receiver.frame_received(message, time.monotonic()):
            if isinstance(event, KeyAccepted) and event.epoch == epoch and not accepted:
                accepted, took = True, time.perf_counter() - t0
    return accepted, (took if accepted else time.perf_counter() - t0)


def _rekey_worker(conn, spec: RekeySpec) -> None:
    """Revoke readers one at a time from an N-reader StreamSender and time what follows.

    ``rekey_s``: ``readers_changed`` with the new set, i.e. from the request to the new key being
    the one ``publish`` uses.  ``switch_s``: that plus the slowest sampled reader's time to verify
    and open what reaches it (readers work in parallel on their own hosts; in-process
    :class:`StreamReceiver` instances stand for them, fed exactly the messages whose topics match
    their subscriptions).  The revoked reader is fed too, and must not get the new key.
    """
    pki = spec.pki
    rng = random.Random(spec.seed)
    certs = [load_certificate(p) for p in pki.reader_certs[:spec.readers]]
    keys = [load_private_key(p) for p in pki.reader_keys]
    readers = tuple(Reader(c, p) for c, p in zip(certs, pki.reader_certs))
    credential = Credential.load(pki.publisher_cert, pki.publisher_key)
    trust = TrustStore.from_directory(pki.trust_dir)
    publishers = DnAllowList(frozenset({pki.publisher_dn}))
    topics = [_reader_topics(spec.group_size, c) for c in certs]

    # The sample's first reader shares as many subscription topics as possible with the victims,
    # so in grouped mode it sits in their group (a new group key) and the others mostly do not.
    order = list(range(spec.readers))
    rng.shuffle(order)
    anchor = order[0]
    mates = sorted(order[1:], key=lambda i: -len(set(topics[i]) & set(topics[anchor])))
    victims = mates[:spec.reps]
    others = [i for i in order[1:] if i not in victims]
    sample = [anchor] + others[:max(0, spec.sample - 1)]

    def receiver(i: int) -> StreamReceiver:
        return StreamReceiver(Credential(certs[i], keys[i % len(keys)]), trust, allowed_publishers=publishers)

    def reaching(i: int, messages) -> list:
        prefixes = topics[i]
        return [m for m in messages if bytes(m[0]).startswith(prefixes)]

    sender = StreamSender(STREAM, credential, ReaderSet(readers), _policy(spec.group_size))
    t0 = time.perf_counter()
    out = sender.start(time.monotonic())
    start_s = time.perf_counter() - t0
    start_bytes = sum(len(part) for m in out for part in m)
    # In grouped mode the victims follow the stream from the start, so each holds its old group
    # key when revoked: the lock-out check is then a real one.  A single envelope has no such state.
    watched = {i: receiver(i) for i in sample + (victims if spec.group_size else [])}
    for i, r in watched.items():
        ok, _ = _feed(r, reaching(i, out), sender.epoch)
        if not ok:
            raise BenchError(f"reader {i} got no key from the first announcement")

    reps = []
    current = list(readers)
    for victim in victims:
        current = [r for r in current if r is not readers[victim]]
        t0 = time.perf_counter()
        out = sender.readers_changed(ReaderSet(tuple(current)), time.monotonic())
        rekey_s = time.perf_counter() - t0
        epoch = sender.epoch
        switched, per_reader = [], []
        for i in sample:
            mine = reaching(i, out)
            per_reader.append(sum(len(part) for m in mine for part in m))
            ok, took = _feed(watched[i], mine, epoch)
            if not ok:
                raise BenchError(f"sampled reader {i} did not get epoch {epoch}'s key")
            switched.append(took)
        locked_out, _ = _feed(watched.pop(victim, None) or receiver(victim), reaching(victim, out), epoch)
        for i in victims:  # readers revoked later stay current (grouped mode only, see above)
            if i in watched and i not in sample:
                _feed(watched[i], reaching(i, out), epoch)
        reps.append({"rekey_s": rekey_s, "switch_s": rekey_s + max(switched), "reader_s": max(switched),
                     "bytes_total": sum(len(part) for m in out for part in m), "bytes_per_reader": max(per_reader),
                     "bytes_per_reader_min": min(per_reader),
                     "messages": len(out), "revoked_reader_got_key": locked_out})
    conn.send({"start_s": start_s, "start_bytes": start_bytes, "reps": reps, **_rss()})


def _in_worker(ctx, target, spec, timeout: float = 3600.0):
    worker = _Worker(ctx, target, spec)
    try:
        return worker.receive(timeout)
    finally:
        worker.process.join(30)
        if worker.process.is_alive():
            worker.process.kill()


def registry_load_seconds(pki: Pki, readers: int, reps: int) -> dict:
    """What the publisher's driver does before it can rekey: load and validate the registry.

    Cold: a first load (every certificate parsed and validated).  Reload: after one certificate
    left the directory, with the driver's :class:`LoadCache` (only what changed is looked at)."""
    directory = pki.registry(readers, f"load-{readers}")
    cold, parse_only, reload = [], [], []
    for _ in range(reps):
        trust = TrustStore.from_directory(pki.trust_dir)
        t0 = time.perf_counter()
        loaded = ReaderRegistry(directory).load(trust)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ReaderRegistry(directory).load()
        parse_only.append(time.perf_counter() - t0)
    if len(loaded) != readers:
        raise BenchError(f"registry of {readers} readers loaded {len(loaded)}: {loaded.refused[:1]}")
    registry, cache, trust = ReaderRegistry(directory), LoadCache(), TrustStore.from_directory(pki.trust_dir)
    registry.load(trust, cache=cache)
    names = sorted(os.listdir(directory))
    for i in range(min(reps, readers - 1)):
        os.unlink(directory / names[i])
        t0 = time.perf_counter()
        loaded = registry.load(trust, cache=cache)
        reload.append(time.perf_counter() - t0)
        if len(loaded) != readers - i - 1:
            raise BenchError(f"registry reload saw {len(loaded)} readers, expected {readers - i - 1}")
    shutil.rmtree(directory)
    return {"registry_load_s": median(cold), "registry_parse_only_s": median(parse_only),
            "registry_reload_s": median(reload)}


def run_rekey(profile: Profile, pki: Pki, group_size: int | None) -> tuple[list[dict], list[str]]:
    ctx = multiprocessing.get_context("spawn")
    notes = []
    have_groups = grouped_api()
    if not have_groups:
        notes.append("grouped key hierarchy not in this tree (no RotationPolicy.group_size / zmqsec.groups): "
                     "single-envelope mode only")
    caps = {n: (reps, sample) for n, reps, sample in profile.single_caps}
    results = []
    for n in profile.rekey_readers:
        loads = registry_load_seconds(pki, n, profile.registry_reps)
        modes = [(SINGLE, 0)] + ([(GROUPED, group_size or auto_group_size(n))] if have_groups else [])
        for mode, g in modes:
            # A single envelope of many readers is slow for every reader to open: fewer of them in the quick profile.
            reps, sample = caps.get(n, (profile.rekey_reps, profile.rekey_sample)) if mode == SINGLE else \
                (profile.rekey_reps, profile.rekey_sample)
            sample = min(sample, n - reps)
            log.info("rekey: %d readers, %s%s, %d revocation(s), %d sampled readers", n, mode,
                     f" (groups of ~{g})" if g else "", reps, sample)
            got = _in_worker(ctx, _rekey_worker, RekeySpec(n, g, reps, sample, 7 + n, pki))
            rows = got["reps"]
            entry = {
                "readers": n, "mode": mode, "group_size": g or None,
                "recommended": mode == (GROUPED if have_groups else SINGLE),
                "rekey_s": median(r["rekey_s"] for r in rows), "switch_s": median(r["switch_s"] for r in rows),
                "bytes_total": int(median(r["bytes_total"] for r in rows)),
                "bytes_per_reader": int(median(r["bytes_per_reader"] for r in rows)),
                "bytes_per_reader_min": int(median(r["bytes_per_reader_min"] for r in rows)),
                "slowest_reader_s": median(r["reader_s"] for r in rows),
                "messages": int(median(r["messages"] for r in rows)),
                "revoked_reader_locked_out": not any(r["revoked_reader_got_key"] for r in rows),
                "repetitions": len(rows), "sampled_readers": sample,
                "start_s": got["start_s"], "start_bytes": got["start_bytes"],
                "sender_peak_rss_mb": got.get("peak_rss_mb"), **loads,
                "rekey_s_samples": [r["rekey_s"] for r in rows],
            }
            results.append(entry)
            log.info("rekey %d %s: %.3f s at the publisher, %.3f s until sampled readers switched, %d bytes (%d per reader)",
                     n, mode, entry["rekey_s"], entry["switch_s"], entry["bytes_total"], entry["bytes_per_reader"])
    return results, notes


# -- bridge ---------------------------------------------------------------------------


def apel_body(size: int) -> bytes:
    """An APEL individual-job message of about ``size`` bytes (ASCII, short lines, as SSM sends)."""
    head = b"APEL-individual-job-message: v0.3\n"
    record = (b"Site: BENCH-SITE\nSubmitHost: ce.bench.example.org\nLocalJobId: %07d\nLocalUserId: user%03d\n"
              b"FQAN: /bench/Role=NULL/Capability=NULL\nWallDuration: 3600\nCpuDuration: 3500\n"
              b"Processors: 1\nStartTime: 1700000000\nEndTime: 1700003600\n%%%%\n")
    out, i = bytearray(head), 0
    while len(out) < size:
        out += record % (i, i % 1000)
        i += 1
    return bytes(out[:size - 1]) + b"\n"


def _openssl(args: list[str], text: str) -> str:
    """One openssl process, as APEL SSM's crypto.py runs it (text in, text out)."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(text)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])} failed: {err.strip()[:200]}")
    return out


class BridgeBench:
    """EMI messages into ActiveMQ with receipts: the bridge's path against APEL SSM's."""

    def __init__(self, parts: BridgeParts, pki: Pki, host: str, port: int, workdir: Path) -> None:
        self.parts, self.pki, self.workdir = parts, pki, workdir
        self.settings = parts.broker_settings(hosts=((host, port),))
        self.destination = f"/queue/zmqsec.bench.{uuid.uuid4().hex[:12]}"
        self.credential = Credential.load(pki.bridge_cert, pki.bridge_key)
        self.server = load_certificate(pki.server_cert)
        self.stream_id = os.urandom(16)
        self.seq = 0
        self.sent = 0  # receipted and not yet drained

    def drain(self, timeout: float = 300.0) -> int:
        """Consume what was sent so the broker does not grow over the run (not timed)."""
        link = self.parts.stomp_link(self.settings)
        link.subscribe(self.destination, ack="auto")
        link.connect()
        got, deadline = 0, time.monotonic() + timeout
        try:
            while got < self.sent and time.monotonic() < deadline:
                if link.next_message(1.0) is not None:
                    got += 1
        finally:
            link.close()
        if got < self.sent:
            raise BenchError(f"the broker held {got} of {self.sent} receipted messages")
        self.sent = 0
        return got

    def _bridge(self, encrypt: bool, outbox):
        link = self.parts.stomp_link(self.settings)
        settings = self.parts.out_settings(destination=self.destination, server_certs=(self.server,) if encrypt else ())
        return link, self.parts.out_bridge(link, outbox, self.credential, settings)

    def _delivered(self, body: bytes) -> Delivered:
        self.seq += 1
        return Delivered(STREAM.encode(), self.stream_id, 1, self.seq, body, self.pki.publisher_dn)

    def zmqsec(self, body: bytes, encrypt: bool, count: int, tag: str) -> float:
        """The bridge as ``zmqsec bridge stomp-out`` runs it: sign (+ encrypt) in-process, the
        fsync'ed outbox, a window of sends with receipts, removal on receipt.  Returns messages/s."""
        outbox = self.parts.outbox(self.workdir / f"outbox-{tag}")
        link, bridge = self._bridge(encrypt, outbox)
        try:
            link.connect()
            t0 = time.perf_counter()
            for _ in range(count):
                bridge.take(self._delivered(body))
            stalled = time.monotonic() + 60
            while bridge.counters["sent"] < count:
                if bridge.send_pending(time.monotonic()):
                    stalled = time.monotonic() + 60
                elif time.monotonic() > stalled:
                    raise BenchError(f"bridge: {bridge.counters['sent']} of {count} receipted after 60s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
            outbox.close()
        self.sent += count
        return count / seconds

    def zmqsec_without_outbox(self, body: bytes, encrypt: bool, count: int) -> float:
        """The same signing and the same windowed sends with receipts, without the durable outbox:
        the work APEL SSM's sender does, done the bridge's way.  Returns messages/s."""
        link, bridge = self._bridge(encrypt, None)
        window = bridge.settings.window
        try:
            link.connect()
            t0 = time.perf_counter()
            for start in range(0, count, window):
                wanted = set()
                for _ in range(min(window, count - start)):
                    message = self._delivered(body)
                    receipt = message.message_id
                    link.send(self.destination, bridge.body_for(message.payload),
                              {"empa-id": receipt, "persistent": "true", "content-type": "text/plain"}, receipt)
                    wanted.add(receipt)
                if link.wait_receipts(wanted, 30.0) != wanted:
                    raise BenchError("bridge without outbox: receipts missing after 30s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        self.sent += count
        return count / seconds

    def openssl_cli(self, body: bytes, encrypt: bool, count: int) -> tuple[float, list[float]]:
        """APEL SSM's sender: per message ``openssl smime -sign`` (then ``-encrypt -aes256``) as
        processes, one STOMP send, wait for its receipt.  Returns messages/s and the crypto times.

        SSM polls for the receipt with 10 ms sleeps; this waits on an event, which flatters it."""
        link = self.parts.stomp_link(self.settings)
        text = body.decode("ascii")
        sign = ["openssl", "smime", "-sign", "-inkey", str(self.pki.bridge_key), "-signer", str(self.pki.bridge_cert), "-text"]
        enc = ["openssl", "smime", "-encrypt", "-aes256", str(self.pki.server_cert)]
        crypto = []
        try:
            link.connect()
            t0 = time.perf_counter()
            for _ in range(count):
                msgid = self._delivered(body).message_id
                c0 = time.perf_counter()
                message = _openssl(sign, text)
                if encrypt:
                    message = _openssl(enc, message)
                crypto.append(time.perf_counter() - c0)
                link.send(self.destination, message.encode(), {"empa-id": msgid, "persistent": "true"}, msgid)
                if not link.wait_receipts({msgid}, 30.0):
                    raise BenchError(f"no receipt for {msgid} within 30s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        self.sent += count
        return count / seconds, crypto

    def crypto_ms(self, body: bytes, encrypt: bool, count: int = 20) -> float:
        """The bridge's sign (+ encrypt) alone, per message."""
        _, bridge = self._bridge(encrypt, None)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            bridge.body_for(body)
            times.append(time.perf_counter() - t0)
        return median(times) * 1e3


def run_bridge(profile: Profile, pki: Pki, parts: BridgeParts, host: str, port: int, workdir: Path) -> list[dict]:
    bench = BridgeBench(parts, pki, host, port, workdir)
    # The broker's JVM compiles its hot paths in its first seconds: warm it with untimed traffic.
    for size in profile.bridge_bodies:
        bench.zmqsec_without_outbox(apel_body(size), False, 100)
    bench.drain()
    results = []
    for size in profile.bridge_bodies:
        body = apel_body(size)
        for mode, encrypt in (("sign", False), ("sign+encrypt", True)):
            log.info("bridge: %d-byte bodies, %s: %d (zmqsec) and %d (openssl CLI) messages x %d repetitions",
                     size, mode, profile.bridge_messages, profile.bridge_openssl_messages, profile.bridge_reps)
            bench.zmqsec(body, encrypt, min(20, profile.bridge_messages), f"warm-{size}-{mode}")  # connections, caches
            bench.openssl_cli(body, encrypt, 2)
            ours, bare, theirs, cli_crypto = [], [], [], []
            for rep in range(profile.bridge_reps):
                ours.append(bench.zmqsec(body, encrypt, profile.bridge_messages, f"{size}-{mode}-{rep}"))
                bare.append(bench.zmqsec_without_outbox(body, encrypt, profile.bridge_messages))
                rate, crypto = bench.openssl_cli(body, encrypt, profile.bridge_openssl_messages)
                theirs.append(rate)
                cli_crypto += crypto
            bench.drain()
            z, b, o = median(ours), median(bare), median(theirs)
            results.append({
                "body_bytes": size, "mode": mode, "zmqsec_msgs_per_s": z, "openssl_cli_msgs_per_s": o, "ratio": z / o,
                "zmqsec_without_outbox_msgs_per_s": b, "ratio_without_outbox": b / o,
                "zmqsec_crypto_ms": bench.crypto_ms(body, encrypt), "openssl_cli_crypto_ms": median(cli_crypto) * 1e3,
                "zmqsec_messages": profile.bridge_messages, "openssl_cli_messages": profile.bridge_openssl_messages,
                "repetitions": profile.bridge_reps,
                "zmqsec_msgs_per_s_samples": ours, "zmqsec_without_outbox_msgs_per_s_samples": bare,
                "openssl_cli_msgs_per_s_samples": theirs,
            })
            log.info("bridge %d B %s: zmqsec %.0f msg/s (%.0f without the outbox), openssl CLI %.1f msg/s (ratio %.1f)",
                     size, mode, z, b, o, z / o)
    return results


class PrivateBroker:
    """A broker of our own on free loopback ports, in the run's work directory, stopped afterwards."""

    def __init__(self, parts: BridgeParts, directory: Path) -> None:
        ports = [_free_port() for _ in range(2)]
        self.broker = parts.local_broker(parts.broker_config(base=directory, openwire_port=ports[0], stomp_ports=(ports[1],)))
        self.host, self.port = "127.0.0.1", ports[1]

    def __enter__(self) -> "PrivateBroker":
        directory = self.broker.config.base
        directory.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.broker.start()
        log.info("bridge: private ActiveMQ on %s:%d (started in %.1f s)", self.host, self.port, time.perf_counter() - t0)
        return self

    def __exit__(self, *exc) -> None:
        self.broker.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- memory -------------------------------------------------------------------------------


def run_memory(profile: Profile, pki: Pki, group_size: int | None) -> tuple[dict, dict]:
    """A real Publisher loading an N-reader registry and one real Subscriber reading from it (their
    peak RSS); then revocations as an operator makes them -- a certificate leaves the registry
    directory, or a certificate goes on the CA's CRL -- each timed until the running publisher's
    new key is in effect.  (The CRL ones change the run's CA: this section runs last.)"""
    ctx = multiprocessing.get_context("spawn")
    n = profile.memory_readers
    g = (group_size or auto_group_size(n)) if grouped_api() else 0
    registry = pki.registry(n, "memory")
    reader_cert, reader_key = pki.reader(0)
    spec = StreamSpec(ZMQSEC, pki.trust_dir, pki.publisher_cert, pki.publisher_key, pki.publisher_dn,
                      registry=registry, reader_cert=reader_cert, reader_key=reader_key, group_size=g)
    log.info("memory: a publisher with %d readers (%s) and one reader", n, f"groups of ~{g}" if g else SINGLE)
    pair = StreamPair(ctx, spec)
    try:
        got, _, lat, problems = pair.run("paced", profile.memory_messages, 1024, profile.memory_rate, latency=True)
        reader = pair.reader.stop()
        pair.reader = None
        removals, crls = [], []
        for i in range(1, 4):  # never reader 0, the one reading
            for command, args, times in (("revoke", (str(registry / pki.reader_certs[n - i].name),), removals),
                                         ("revoke-crl", (str(pki.ca_dir), str(pki.reader_certs[n - 3 - i])), crls)):
                _, seconds, new_epoch, old_epoch, watch_interval = pair.publisher.call(command, *args, 600.0)
                if new_epoch <= old_epoch:
                    raise BenchError(f"{command}: revoking one of {n} readers did not rekey within 600 s")
                times.append(seconds)
    finally:
        rss = pair.stop()
    # The same traffic between plain pyzmq processes (same interpreter, same imports): what the
    # figures above would be without zmqsec's state.
    plain = StreamPair(ctx, dataclasses.replace(spec, system=PLAIN))
    try:
        plain.run("paced", profile.memory_messages, 1024, profile.memory_rate)
    finally:
        plain_rss = plain.stop()
    return {
        "publisher_10k_readers_rss_mb": rss["publisher"].get("peak_rss_mb"),
        "reader_rss_mb": reader.get("peak_rss_mb"),
        "publisher_readers": n, "publisher_mode": GROUPED if g else SINGLE, "group_size": g or None,
        "plain_publisher_rss_mb": plain_rss["publisher"].get("peak_rss_mb"),
        "plain_reader_rss_mb": plain_rss["reader"].get("peak_rss_mb"),
        "publisher_rss_after_start_mb": pair.publisher_rss.get("rss_mb"),
        "publisher_current_rss_mb": rss["publisher"].get("rss_mb"),
        "reader_current_rss_mb": reader.get("rss_mb"),
        "publisher_setup_s": pair.setup_s,
        "reader_messages": got, "reader_p50_ms": percentile(lat, 50), "reader_problems": problems,
    }, {
        "readers": n, "mode": GROUPED if g else SINGLE, "group_size": g or None,
        "revocation_to_new_key_s": median(removals), "samples": removals,
        "crl_revocation_to_new_key_s": median(crls), "crl_samples": crls,
        "watch_interval_s": watch_interval, "repetitions": len(removals),
    }


# -- plots -----------------------------------------------------------------------------------


def write_plots(results: dict, directory: Path) -> list[Path]:
    """PNG figures for docs/performance.md (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    label = f"({results['profile']} profile, {results['machine']['cpus']} CPUs)"

    def save(fig, name):
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if results.get("stream"):
        rows = results["stream"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        names = [f"{r['payload_bytes'] // 1024} KiB" for r in rows]
        x = range(len(rows))
        for ax, key, unit in ((axes[0], "msgs_per_s", "messages/s"), (axes[1], "mb_per_s", "MB/s")):
            ax.bar([i - 0.2 for i in x], [r[f"plain_{key}"] for r in rows], 0.4, label="plain pyzmq")
            ax.bar([i + 0.2 for i in x], [r[f"zmqsec_{key}"] for r in rows], 0.4, label="zmqsec")
            for i, r in zip(x, rows):
                ax.annotate(f"{r['msgs_ratio']:.0%}", (i + 0.2, r[f"zmqsec_{key}"]), ha="center", va="bottom")
            ax.set_xticks(list(x), names)
            ax.set_ylabel(unit)
            ax.set_title(f"throughput, {unit}")
            ax.legend()
        ax = axes[2]
        ax.bar([i - 0.3 for i in x], [r["plain_p50_ms"] for r in rows], 0.2, label="plain p50")
        ax.bar([i - 0.1 for i in x], [r["plain_p99_ms"] for r in rows], 0.2, label="plain p99")
        ax.bar([i + 0.1 for i in x], [r["p50_ms"] for r in rows], 0.2, label="zmqsec p50")
        ax.bar([i + 0.3 for i in x], [r["p99_ms"] for r in rows], 0.2, label="zmqsec p99")
        ax.set_xticks(list(x), names)
        ax.set_ylabel("ms, publish to verified delivery")
        ax.set_title(f"latency at {rows[0]['latency_rate_per_s']} msg/s")
        ax.legend(fontsize=8)
        fig.suptitle(f"stream over tcp loopback {label}")
        save(fig, "stream.png")

    if results.get("rekey"):
        rows = results["rekey"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        for mode, color, marker in ((SINGLE, "tab:blue", "o"), (GROUPED, "tab:orange", "s")):
            mine = [r for r in rows if r["mode"] == mode]
            if not mine:
                continue
            n = [r["readers"] for r in mine]
            axes[0].plot(n, [r["rekey_s"] for r in mine], marker=marker, color=color, label=f"{mode}: new key at the publisher")
            axes[0].plot(n, [r["switch_s"] for r in mine], marker=marker, color=color, linestyle="--",
                         label=f"{mode}: sampled readers hold it")
            axes[1].plot(n, [r["bytes_total"] for r in mine], marker=marker, color=color, label=f"{mode}: all bytes sent")
            axes[1].plot(n, [r["bytes_per_reader"] for r in mine], marker=marker, color=color, linestyle="--",
                         label=f"{mode}: most a reader receives")
            if mode == GROUPED:
                axes[1].plot(n, [r["bytes_per_reader_min"] for r in mine], marker=marker, color=color, linestyle=":",
                             label=f"{mode}: a reader in another group")
        axes[0].axhline(1.0, color="grey", linestyle=":", label="target: 1 s (for 10,000 readers)")
        for ax, unit in ((axes[0], "seconds"), (axes[1], "bytes")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("authorized readers")
            ax.set_ylabel(unit)
            ax.legend(fontsize=7)
        axes[0].set_title("revoking one reader: time")
        axes[1].set_title("revoking one reader: key announcement bytes")
        fig.suptitle(f"rekey {label}")
        save(fig, "rekey.png")

    if results.get("bridge"):
        rows = results["bridge"]
        fig, ax = plt.subplots(figsize=(10, 4.4))
        names = [f"{r['body_bytes'] // 1024} KiB\n{r['mode']}" for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.27 for i in x], [r["openssl_cli_msgs_per_s"] for r in rows], 0.27,
               label="openssl CLI per message, one receipt at a time (APEL SSM)")
        ax.bar(list(x), [r["zmqsec_msgs_per_s"] for r in rows], 0.27, label="zmqsec bridge (durable outbox, windowed receipts)")
        ax.bar([i + 0.27 for i in x], [r["zmqsec_without_outbox_msgs_per_s"] for r in rows], 0.27,
               label="zmqsec signing and sending, without the outbox")
        for i, r in zip(x, rows):
            ax.annotate(f"x{r['ratio']:.1f}", (i, r["zmqsec_msgs_per_s"]), ha="center", va="bottom", fontsize=8)
            ax.annotate(f"x{r['ratio_without_outbox']:.1f}", (i + 0.27, r["zmqsec_without_outbox_msgs_per_s"]),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), names)
        ax.set_ylabel("messages/s into ActiveMQ, receipted")
        ax.set_title(f"EMI S/MIME into ActiveMQ (target: 20x the openssl CLI) {label}")
        ax.legend(fontsize=8)
        save(fig, "bridge.png")

    if results.get("memory"):
        m = results["memory"]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        mode = f"{m['publisher_mode']}" + (f", groups of ~{m['group_size']}" if m.get("group_size") else "")
        bars = {f"zmqsec publisher\n{m['publisher_readers']} readers\n({mode})": m["publisher_10k_readers_rss_mb"],
                "plain pyzmq\npublisher": m["plain_publisher_rss_mb"],
                "zmqsec reader": m["reader_rss_mb"], "plain pyzmq\nreader": m["plain_reader_rss_mb"]}
        ax.bar(list(bars), list(bars.values()), color=["tab:orange", "tab:blue", "tab:orange", "tab:blue"])
        for i, v in enumerate(bars.values()):
            ax.annotate(f"{v:.0f} MB", (i, v), ha="center", va="bottom")
        ax.set_ylabel("peak RSS, MB")
        ax.set_title(f"memory, {m['reader_messages']} messages of 1 KiB {label}", fontsize=10)
        save(fig, "memory.png")
    return written


# -- the run -------------------------------------------------------------------------------


def _machine() -> dict:
    import cryptography

    try:
        openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        openssl = None
    model = None
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform(), "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "cryptography": cryptography.__version__,
            "openssl_cli": openssl}


def _load() -> float:
    """One-minute load average: other work on the machine shows in every figure, so it is recorded."""
    return os.getloadavg()[0]


def evaluate_targets(results: dict) -> list[dict]:
    """The issue's targets against this run's figures (met, missed, or not measured in this profile)."""
    out = []
    stream = {r["payload_bytes"]: r for r in results.get("stream", [])}
    for size, key, goal, text in ((1024, "msgs_ratio", 0.5, "zmqsec >= 50% of plain pyzmq messages/s at 1 KiB"),
                                  (65536, "mb_ratio", 0.85, "zmqsec >= 85% of plain pyzmq MB/s at 64 KiB")):
        value = stream[size][key] if size in stream else None
        out.append({"target": text, "goal": goal, "measured": value, "met": None if value is None else value >= goal})
    rows = [r for r in results.get("rekey", []) if r["readers"] == 10_000]
    for r in rows:
        out.append({"target": f"revoking one of 10,000 readers in effect within 1 s ({r['mode']})", "goal": 1.0,
                    "measured": r["rekey_s"], "met": r["rekey_s"] <= 1.0})
    revocation = results.get("revocation")
    if revocation and revocation["readers"] == 10_000:
        out.append({"target": "revoking one of 10,000 readers in effect within 1 s (running publisher: registry "
                              f"removal to new key, {revocation['mode']})", "goal": 1.0,
                    "measured": revocation["revocation_to_new_key_s"], "met": revocation["revocation_to_new_key_s"] <= 1.0})
        out.append({"target": "revoking one of 10,000 readers in effect within 1 s (running publisher: certificate "
                              f"on the CRL to new key, {revocation['mode']})", "goal": 1.0,
                    "measured": revocation["crl_revocation_to_new_key_s"],
                    "met": revocation["crl_revocation_to_new_key_s"] <= 1.0})
    if not rows:
        out.append({"target": "revoking one of 10,000 readers in effect within 1 s", "goal": 1.0, "measured": None,
                    "met": None, "note": "this profile stops below 10,000 readers"})
    for r in results.get("bridge", []):
        out.append({"target": f"bridge >= 20x openssl per message ({r['body_bytes']} B, {r['mode']})", "goal": 20.0,
                    "measured": r["ratio"], "met": r["ratio"] >= 20.0})
    return out


def run(config: BenchConfig, parts: BridgeParts | None) -> dict:
    """Run the chosen sections; write the JSON (and plots) and return the results."""
    profile = config.profile
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    results: dict = {"profile": profile.name, "started": started.isoformat(timespec="seconds"), "machine": _machine(),
                     "settings": dataclasses.asdict(profile), "sections": list(config.sections), "notes": [],
                     "load_average": {"start": _load()}}
    if results["load_average"]["start"] > (os.cpu_count() or 1) / 2:
        log.warning("the machine is busy (load average %.1f on %d CPUs): figures will be lower and noisier",
                    results["load_average"]["start"], os.cpu_count() or 1)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="zmqsec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The stream's operator log lines (a rekey, a key accepted) would be noise here, and cost time.
    quiet = {name: logging.getLogger(name).level
             for name in ("zmqsec.publisher", "zmqsec.reader", "zmqsec.stomp", "stomp.py")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        needed = max([1]
                     + (list(profile.rekey_readers) if "rekey" in config.sections else [])
                     + ([profile.memory_readers] if "memory" in config.sections else []))
        t = time.perf_counter()
        pki = make_pki(workdir / "pki", needed)
        results["setup_s"] = time.perf_counter() - t
        log.info("set-up: CA and %d reader certificates (sharing %d key pairs) in %.1f s", needed, SHARED_READER_KEYS,
                 results["setup_s"])
        if "stream" in config.sections:
            results["stream"] = run_stream(profile, pki)
            results["load_average"]["after_stream"] = _load()
        if "rekey" in config.sections:
            results["rekey"], notes = run_rekey(profile, pki, config.group_size)
            results["notes"] += notes
            results["load_average"]["after_rekey"] = _load()
        if "bridge" in config.sections:
            if parts is None:
                raise BenchError("the bridge section needs the bridge's classes (run it through `zmqsec bench`)")
            if config.broker:
                results["broker"] = f"{config.broker[0]}:{config.broker[1]} (given)"
                results["bridge"] = run_bridge(profile, pki, parts, *config.broker, workdir)
            else:
                with PrivateBroker(parts, workdir / "broker") as broker:
                    results["broker"] = f"{broker.host}:{broker.port} (private, started by the bench)"
                    results["bridge"] = run_bridge(profile, pki, parts, broker.host, broker.port, workdir)
            results["load_average"]["after_bridge"] = _load()
        if "memory" in config.sections:
            results["memory"], results["revocation"] = run_memory(profile, pki, config.group_size)
            results["load_average"]["after_memory"] = _load()
        results["targets"] = evaluate_targets(results)
        results["duration_s"] = time.perf_counter() - t0
        results = _round(results)
        config.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = config.out.with_name(f".{config.out.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, config.out)
        if config.plots:
            for path in write_plots(results, config.out.parent):
                log.info("plot %s", path)
        log.info("results in %s after %.0f s", config.out, results["duration_s"])
        return results
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        if config.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


# -- command line ------------------------------------------------------------------------------


def _broker_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--broker {text!r} is not HOST:PORT (a STOMP port)")
    return host.strip("[]"), int(port)


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated subset of {','.join(SECTIONS)}")
    return chosen


def register(subparsers, parts: BridgeParts | None) -> None:
    p = subparsers.add_parser("bench", help="measure zmqsec beside plain pyzmq and the openssl-per-message bridge",
                              description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--quick", action="store_true", help="the quick profile (under 2 minutes; fewer readers and messages)")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"),
                   help="results JSON; the PNG plots go beside it (default: bench/results.json)")
    p.add_argument("--broker", type=_broker_address, metavar="HOST:PORT",
                   help="STOMP port of an ActiveMQ to use (default: start a private one on free ports)")
    p.add_argument("--only", type=_sections, default=SECTIONS, metavar="SECTIONS",
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--group-size", type=int, metavar="N", help="grouped mode: readers per group (default: about sqrt(readers))")
    p.add_argument("--workdir", type=Path, help="keep certificates, broker data and outboxes here (default: a temporary directory)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.set_defaults(func=lambda args: cmd_bench(args, parts))


def cmd_bench(args, parts: BridgeParts | None) -> int:
    if args.group_size is not None and args.group_size < 1:
        raise BenchError("--group-size must be 1 or more")
    config = BenchConfig(profile=QUICK if args.quick else FULL, out=args.out, broker=args.broker, sections=args.only,
                         group_size=args.group_size, workdir=args.workdir.resolve() if args.workdir else None,
                         plots=not args.no_plots)
    results = run(config, parts)
    missed = [t["target"] for t in results["targets"] if t["met"] is False]
    print(f"zmqsec bench ({config.profile.name}): {config.out} in {results['duration_s']:.0f} s; "
          + (f"targets missed: {'; '.join(missed)}" if missed else "every measured target met"), file=sys.stderr)
    return 0
