"""The bridge section, run: both directions at each body size and mode (:mod:`.bridge`, :mod:`.bridge_in`), then
stomp-out under a steady input (:mod:`.bridge_steady`)."""

from __future__ import annotations

import logging
from pathlib import Path

from zmqsec.bridges.workers import default_workers

from .bridge import BridgeBench, apel_body, pkcs7_builder_ms
from .bridge_in import InboundBench
from .bridge_steady import STEADY_RATE, steady
from .config import Profile
from .pki import Pki
from .stats import median

log = logging.getLogger("zmqsec.bench")


def run_bridge(profile: Profile, pki: Pki, host: str, port: int, workdir: Path) -> dict[str, list[dict]]:
    """``bridge``: each body size of the profile, signed and signed+encrypted, each direction, one row each, the
    bridge's rate against the openssl CLI's (and, out, without the outbox and the broker's own ceiling).
    ``bridge_steady``: stomp-out under a steady input of STEADY_RATE 1 KiB messages/s, each mode."""
    bench = BridgeBench(pki, host, port, workdir)
    try:
        return _run(bench, profile)
    finally:
        bench.close()


def _run(bench: BridgeBench, profile: Profile) -> dict[str, list[dict]]:
    inbound = InboundBench(bench)
    try:
        return _measure(bench, inbound, profile)
    finally:
        inbound.close()


def _measure(bench: BridgeBench, inbound: InboundBench, profile: Profile) -> dict[str, list[dict]]:
    # The broker's JVM compiles its hot paths in its first seconds: warm it with untimed traffic.
    for size in profile.bridge_bodies:
        bench.zmqsec_without_outbox(apel_body(size), False, 100)
    bench.drain()
    # The same for its consuming side (client-individual acknowledgements): the first stomp-in runs of a fresh
    # broker measured a third of the later ones.
    inbound.stomp_in(apel_body(1024), False, profile.bridge_in_messages, "warm")
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
            ceiling = [bench.broker_only(body, encrypt, profile.bridge_messages) for _ in range(profile.bridge_reps)]
            bench.drain()
            z, b, o, c = median(ours), median(bare), median(theirs), median(ceiling)
            results.append({
                "direction": "out",
                "body_bytes": size, "mode": mode, "zmqsec_msgs_per_s": z, "openssl_cli_msgs_per_s": o, "ratio": z / o,
                "zmqsec_without_outbox_msgs_per_s": b, "ratio_without_outbox": b / o, "broker_msgs_per_s": c,
                "zmqsec_crypto_ms": bench.crypto_ms(body, encrypt), "openssl_cli_crypto_ms": median(cli_crypto) * 1e3,
                "cryptography_pkcs7_crypto_ms": pkcs7_builder_ms(bench.credential, bench.server, body, encrypt),
                "zmqsec_messages": profile.bridge_messages, "openssl_cli_messages": profile.bridge_openssl_messages,
                "repetitions": profile.bridge_reps, "sign_workers": default_workers(),
                "zmqsec_msgs_per_s_samples": ours, "zmqsec_without_outbox_msgs_per_s_samples": bare,
                "openssl_cli_msgs_per_s_samples": theirs, "broker_msgs_per_s_samples": ceiling,
            })
            log.info("bridge out %d B %s: zmqsec %.0f msg/s (%.0f without the outbox; the broker alone %.0f), "
                     "openssl CLI %.1f msg/s (ratio %.1f)", size, mode, z, b, c, o, z / o)
            ours_in = [inbound.stomp_in(body, encrypt, profile.bridge_in_messages, f"{size}-{mode}-{rep}")
                       for rep in range(profile.bridge_reps)]
            theirs_in = [inbound.openssl_cli_in(body, encrypt, profile.bridge_openssl_messages, f"{size}-{mode}-{rep}")
                         for rep in range(profile.bridge_reps)]
            zi, oi = median(ours_in), median(theirs_in)
            results.append({
                "direction": "in", "body_bytes": size, "mode": mode, "zmqsec_msgs_per_s": zi,
                "openssl_cli_msgs_per_s": oi, "ratio": zi / oi, "zmqsec_messages": profile.bridge_in_messages,
                "openssl_cli_messages": profile.bridge_openssl_messages, "repetitions": profile.bridge_reps,
                "zmqsec_msgs_per_s_samples": ours_in, "openssl_cli_msgs_per_s_samples": theirs_in,
            })
            log.info("bridge in %d B %s: zmqsec %.0f msg/s, openssl CLI %.1f msg/s (ratio %.1f)", size, mode, zi, oi,
                     zi / oi)
    steady_rows = []
    for encrypt in (False, True):
        row = steady(bench, apel_body(1024), encrypt, STEADY_RATE, profile.bridge_steady_s)
        bench.drain()
        log.info("bridge out under a steady %d msg/s, 1024 B %s: outbox at most %d (median %d), %d at the end",
                 STEADY_RATE, row["mode"], row["max_backlog"], row["median_backlog"], row["backlog_at_end"])
        steady_rows.append(row)
    return {"bridge": results, "bridge_steady": steady_rows}
