"""The rekey section: revoking one of N readers -- the publisher's rekey, the time until sampled
readers hold the new key, and the bytes each reader must receive, single-envelope, grouped and key
tree -- and the registry load the publisher's driver does first."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import shutil
import time
from dataclasses import dataclass

from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential, load_certificate, load_private_key
from zmqsec.keys.registry import LoadCache, Reader, ReaderRegistry, ReaderSet
from zmqsec.keys.trust import TrustStore

from zmqsec.machines.receiver import KeyAccepted, StreamReceiver
from zmqsec.machines.sender import StreamSender, wire

from zmqsec.protocol.groups import leaf_topic
from zmqsec.protocol.tree import tree_bits

from .config import GROUPED, SINGLE, STREAM, TREE, BenchError, Profile
from .grouping import auto_group_size, grouped_api, policy, reader_topics, tree_api
from .pki import Pki
from .stats import median, rss
from .workers import in_worker

log = logging.getLogger("zmqsec.bench")


@dataclass(frozen=True)
class RekeySpec:
    """What a rekey worker needs (picklable): N readers, a group size (0: single envelope) or a key tree,
    how many revocations, how many readers to time, and the seed that picks them."""

    readers: int
    group_size: int  # 0: single envelope (or key tree)
    reps: int
    sample: int
    seed: int
    pki: Pki
    tree: bool = False


def _tree_bytes(out, bits: dict[int, bytes], remaining) -> int:
    """The most key tree and epoch announcement bytes any remaining reader receives of ``out`` (every reader,
    not a sample: a T frame reaches the readers whose tree bits its topic's tag prefixes)."""
    common, by_tag = 0, {}
    for m in out:
        topic = bytes(m[0])
        size = sum(len(part) for part in m)
        if b"\x00T" in topic:
            tag = topic[topic.index(b"\x00T") + 2:-1]
            by_tag[tag] = by_tag.get(tag, 0) + size
        else:
            common += size
    return common + max(sum(size for tag, size in by_tag.items() if bits[i].startswith(tag)) for i in remaining)

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
    topics = [reader_topics(spec.group_size, c, spec.tree) for c in certs]

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

    sender = StreamSender(STREAM, credential, ReaderSet(readers), policy(spec.group_size, spec.tree))
    t0 = time.perf_counter()
    out = wire(sender.start(time.monotonic()))
    start_s = time.perf_counter() - t0
    start_bytes = sum(len(part) for m in out for part in m)
    # In grouped and tree mode the victims follow the stream from the start, so each holds its old group
    # key or tree path when revoked: the lock-out check is then a real one.  A single envelope has no such state.
    watched = {i: receiver(i) for i in sample + (victims if spec.group_size or spec.tree else [])}
    if spec.tree:  # each watched reader subscribes to its leaf topic, and gets its path
        out += wire(sender.subscription_seen(time.monotonic(), [leaf_topic(STREAM, certs[i]) for i in watched]))
        bits = {i: tree_bits(r.fingerprint) for i, r in enumerate(readers)}
    for i, r in watched.items():
        ok, _ = _feed(r, reaching(i, out), sender.epoch)
        if not ok:
            raise BenchError(f"reader {i} got no key from the first announcement")

    reps, revoked = [], set()
    current = list(readers)
    for victim in victims:
        current = [r for r in current if r is not readers[victim]]
        t0 = time.perf_counter()
        out = wire(sender.readers_changed(ReaderSet(tuple(current)), time.monotonic()))
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
        revoked.add(victim)
        most = _tree_bytes(out, bits, (i for i in range(spec.readers) if i not in revoked)) if spec.tree else None
        locked_out, _ = _feed(watched.pop(victim, None) or receiver(victim), reaching(victim, out), epoch)
        for i in victims:  # readers revoked later stay current (grouped mode only, see above)
            if i in watched and i not in sample:
                _feed(watched[i], reaching(i, out), epoch)
        reps.append({"rekey_s": rekey_s, "switch_s": rekey_s + max(switched), "reader_s": max(switched),
                     "bytes_total": sum(len(part) for m in out for part in m),
                     "bytes_per_reader": max(per_reader) if most is None else most,
                     "bytes_per_reader_min": min(per_reader),
                     "messages": len(out), "revoked_reader_got_key": locked_out})
    conn.send({"start_s": start_s, "start_bytes": start_bytes, "reps": reps, **rss()})


def registry_load_seconds(pki: Pki, readers: int, reps: int, reload_reps: int | None = None) -> dict:
    """What the publisher's driver does before it can rekey: load and validate the registry.

    Cold: a first load (every certificate parsed and validated), ``reps`` times.  Reload: after one certificate
    left the directory, with the driver's :class:`LoadCache`, as the driver reloads between rechecks (a listing;
    only the names that went or came are judged), ``reload_reps`` times (default ``reps``)."""
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
    for i in range(min(reload_reps or reps, readers - 1)):
        os.unlink(directory / names[i])
        t0 = time.perf_counter()
        loaded = registry.load(trust, cache=cache, restat=False)
        reload.append(time.perf_counter() - t0)
        if len(loaded) != readers - i - 1:
            raise BenchError(f"registry reload saw {len(loaded)} readers, expected {readers - i - 1}")
    shutil.rmtree(directory)
    return {"registry_load_s": median(cold), "registry_parse_only_s": median(parse_only),
            "registry_reload_s": median(reload)}


def run_rekey(profile: Profile, pki: Pki, group_size: int | None) -> tuple[list[dict], list[str]]:
    """Each reader count of the profile, single-envelope and (where this tree has it) grouped:
    one row per count and mode, and notes on what could not be measured."""
    ctx = multiprocessing.get_context("spawn")
    notes = []
    have_groups, have_tree = grouped_api(), tree_api()
    if not have_groups:
        notes.append("grouped key hierarchy not in this tree (no RotationPolicy.group_size / zmqsec.groups): "
                     "single-envelope mode only")
    if not have_tree:
        notes.append("key tree mode not in this tree (no RotationPolicy.mode)")
    caps = {n: (reps, sample) for n, reps, sample in profile.single_caps}
    results = []
    for n in profile.rekey_readers:
        loads = registry_load_seconds(pki, n, profile.registry_reps if n < 100_000 else 1, profile.registry_reps)
        modes = ([(SINGLE, 0)] + ([(GROUPED, group_size or auto_group_size(n))] if have_groups else [])
                 + ([(TREE, 0)] if have_tree else []))
        for mode, g in modes:
            # A single envelope of many readers is slow for every reader to open: fewer of them in the quick profile.
            reps, sample = caps.get(n, (profile.rekey_reps, profile.rekey_sample)) if mode == SINGLE else \
                (profile.rekey_reps, profile.rekey_sample)
            sample = min(sample, n - reps)
            log.info("rekey: %d readers, %s%s, %d revocation(s), %d sampled readers", n, mode,
                     f" (groups of ~{g})" if g else "", reps, sample)
            got = in_worker(ctx, _rekey_worker, RekeySpec(n, g, reps, sample, 7 + n, pki, tree=mode == TREE))
            rows = got["reps"]
            entry = {
                "readers": n, "mode": mode, "group_size": g or None,
                "recommended": mode == (TREE if have_tree and n >= 10_000 else GROUPED if have_groups else SINGLE),
                "rekey_s": median(r["rekey_s"] for r in rows), "switch_s": median(r["switch_s"] for r in rows),
                "bytes_total": int(median(r["bytes_total"] for r in rows)),
                "bytes_per_reader": int(median(r["bytes_per_reader"] for r in rows)),
                "bytes_per_reader_of": "every remaining reader" if mode == TREE else "the sampled readers",
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
