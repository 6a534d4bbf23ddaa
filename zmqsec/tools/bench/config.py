"""What one ``zmqsec bench`` run measures: the profiles, the run's configuration, and the names
its results use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zmqsec.errors import ZmqsecError

STREAM = "bench"
PLAIN, ZMQSEC, JOURNALED = "plain", "zmqsec", "zmqsec+journal"
SINGLE, GROUPED, TREE = "single-envelope", "grouped", "tree"
SECTIONS = ("stream", "replay", "rekey", "bridge", "memory", "start")


class BenchError(ZmqsecError):
    """A benchmark step could not run (a worker died, a broker did not start, a reader got no key)."""


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
    bridge_in_messages: int  # per repetition, stomp-in (more: it is fast enough for fixed costs to show)
    bridge_reps: int
    bridge_steady_s: float  # seconds of a steady input (STEADY_RATE msg/s) per mode, 1 KiB
    memory_readers: int
    memory_messages: int
    memory_rate: int
    replay_rate: int  # records/s of the live stream while the replay section's reader is stopped
    replay_outage_s: float
    start_readers: int = 100_000  # registry of the start section


QUICK = Profile(
    name="quick", stream_payloads=(1024, 65536), stream_seconds=0.6, stream_reps=3, latency_rate=1000,
    latency_messages=600, rekey_readers=(10, 100, 1000), rekey_reps=3, rekey_sample=5,
    single_caps=((1000, 1, 2),), registry_reps=1, bridge_bodies=(1024, 65536), bridge_messages=60,
    bridge_openssl_messages=10, bridge_in_messages=300, bridge_reps=3, bridge_steady_s=4.0, memory_readers=1000,
    memory_messages=300, memory_rate=200,
    replay_rate=100, replay_outage_s=5.0, start_readers=2500)
FULL = Profile(
    name="full", stream_payloads=(1024, 65536), stream_seconds=3.0, stream_reps=5, latency_rate=1000,
    latency_messages=5000, rekey_readers=(10, 100, 1000, 10_000, 100_000), rekey_reps=3, rekey_sample=5,
    single_caps=((10_000, 3, 3), (100_000, 1, 1)), registry_reps=3, bridge_bodies=(1024, 65536), bridge_messages=300,
    bridge_openssl_messages=60, bridge_in_messages=3000, bridge_reps=5, bridge_steady_s=20.0,
    memory_readers=10_000, memory_messages=2000, memory_rate=500,
    replay_rate=100, replay_outage_s=60.0)


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
