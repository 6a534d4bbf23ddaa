"""The stream section: plain pyzmq PUB/SUB against a zmqsec ``Publisher``/``Subscriber`` over tcp
loopback, with the publisher's journal off and on (messages/s, MB/s, paced latency), and where a zmqsec
message's CPU time goes."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential, load_certificate
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.keys.trust import TrustStore

from zmqsec.machines.receiver import Delivered, StreamReceiver
from zmqsec.machines.sender import RotationPolicy, StreamSender, wire

from .config import JOURNALED, PLAIN, STREAM, ZMQSEC, BenchError, Profile
from .pki import Pki
from .stats import disk_bytes, median, percentile
from .systems import HWM, StreamSpec
from .workers import StreamPair

log = logging.getLogger("zmqsec.bench")

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
        for message in wire(sender.start(now)):
            receiver.frame_received(message, now)
        actions = []
        t0 = time.perf_counter()
        for _ in range(count):
            actions += sender.publish(payload, now)
        actions += sender.flush(now)
        publish.append((time.perf_counter() - t0) / count * 1e6)
        delivered = 0
        t0 = time.perf_counter()
        for message in wire(actions):
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


def run_stream(profile: Profile, pki: Pki, workdir: Path) -> list[dict]:
    """Plain pyzmq, zmqsec, and zmqsec with its journal on, side by side, repetitions interleaved so drift
    hits all three alike.  Two rows per payload size: ``"journal": false`` and ``"journal": true``."""
    ctx = multiprocessing.get_context("spawn")
    registry = pki.registry(1, "stream")
    reader_cert, reader_key = pki.reader(0)
    base = StreamSpec(PLAIN, pki.trust_dir, pki.publisher_cert, pki.publisher_key, pki.publisher_dn,
                      registry=registry, reader_cert=reader_cert, reader_key=reader_key)
    results = []
    for size in profile.stream_payloads:
        journal_dir = workdir / f"journal-{size}"
        systems = {PLAIN: base, ZMQSEC: dataclasses.replace(base, system=ZMQSEC),
                   JOURNALED: dataclasses.replace(base, system=JOURNALED, journal=journal_dir)}
        pairs, warm_up = {}, 2000 if size <= 4096 else 300
        try:
            for system, spec in systems.items():
                pairs[system] = StreamPair(ctx, spec)
            counts = {}
            for system, pair in pairs.items():
                # Warm-up (connections, caches, allocator) that also sizes the bursts: each system
                # sends what fills stream_seconds at its own pace, so all are timed over similar spans.
                got, seconds, _, _ = pair.run("burst", warm_up, size)
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
        journal_bytes = disk_bytes(journal_dir)
        shutil.rmtree(journal_dir, ignore_errors=True)
        plain = median(samples[PLAIN])
        cpu = per_message_cpu(pki, size)
        for system in (ZMQSEC, JOURNALED):
            secure = median(samples[system])
            row = {
                "payload_bytes": size, "journal": system == JOURNALED,
                "plain_msgs_per_s": plain, "zmqsec_msgs_per_s": secure,
                "plain_mb_per_s": plain * size / 1e6, "zmqsec_mb_per_s": secure * size / 1e6,
                "msgs_ratio": secure / plain, "mb_ratio": (secure * size) / (plain * size),
                "p50_ms": percentile(latency[system], 50), "p99_ms": percentile(latency[system], 99),
                "plain_p50_ms": percentile(latency[PLAIN], 50), "plain_p99_ms": percentile(latency[PLAIN], 99),
                "latency_rate_per_s": profile.latency_rate, "latency_messages": profile.latency_messages,
                "latency_delivered": {PLAIN: len(latency[PLAIN]), "zmqsec": len(latency[system])},
                "messages": {PLAIN: counts[PLAIN], "zmqsec": counts[system]}, "repetitions": profile.stream_reps,
                "dropped": {s: counts[s] * len(delivered[s]) - sum(delivered[s]) for s in (PLAIN, system)},
                "zmqsec_reader_problems": problems[system],
                "plain_msgs_per_s_samples": samples[PLAIN], "zmqsec_msgs_per_s_samples": samples[system],
                "reader_peak_rss_mb": {s: rss[s]["reader"].get("peak_rss_mb") for s in (PLAIN, system)},
                "zmqsec_reader_peak_rss_mb": rss[system]["reader"].get("peak_rss_mb"),  # the stream issue's key
                **cpu,
            }
            if system == JOURNALED:
                off = median(samples[ZMQSEC])
                journaled = warm_up + counts[JOURNALED] * profile.stream_reps + profile.latency_messages
                row.update({"journal_off_msgs_per_s": off, "journal_ratio": secure / off,
                            "journal_bytes": journal_bytes, "journal_bytes_per_message": journal_bytes / journaled})
            results.append(row)
        log.info("stream %d B: plain %.0f msg/s, zmqsec %.0f msg/s (ratio %.2f), with journal %.0f msg/s "
                 "(%.2f of journal off); zmqsec latency p50 %.1f ms p99 %.1f ms (journal on: %.1f / %.1f ms)",
                 size, plain, results[-2]["zmqsec_msgs_per_s"], results[-2]["msgs_ratio"],
                 results[-1]["zmqsec_msgs_per_s"], results[-1]["journal_ratio"], results[-2]["p50_ms"],
                 results[-2]["p99_ms"], results[-1]["p50_ms"], results[-1]["p99_ms"])
    return results

