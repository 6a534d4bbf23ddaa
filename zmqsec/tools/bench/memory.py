"""The memory section: peak RSS of a publisher holding many readers and of a reader, and
revocations timed on the running publisher."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing

from .config import GROUPED, PLAIN, SINGLE, ZMQSEC, BenchError, Profile
from .grouping import auto_group_size, grouped_api
from .pki import Pki
from .stats import median, percentile
from .systems import StreamSpec
from .workers import StreamPair

log = logging.getLogger("zmqsec.bench")


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
