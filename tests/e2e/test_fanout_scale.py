"""Fan-out at scale with real processes: a relay tree with a multicast branch and 50+ readers, and a
registry of 10,000 readers whose rekeys send each reader a bounded announcement."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kit import daemons, netns
from kit.pki import scale_site, scratch_dir
from zmqsec.keys.registry import fingerprint

TREE_READERS = 52
REGISTRY = 10_000
GROUP_SIZE = 128


@pytest.fixture
def scratch():
    """A directory on tmpfs when there is one (thousands of certificates are written), removed afterwards."""
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not netns.AVAILABLE, reason=netns.WHY_NOT)
def test_a_relay_tree_with_a_multicast_branch_and_a_revocation_under_load(scratch):
    scale_site(scratch, TREE_READERS, materialize=TREE_READERS)
    result = netns.run_driver("tree_driver.py", scratch, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"OK {TREE_READERS} readers" in result.stdout


def test_ten_thousand_readers_each_receive_a_bounded_announcement(scratch):
    site = scale_site(scratch, REGISTRY, materialize=4)
    names = sorted(site.readers)
    victim, sampled = names[0], names[1:]
    endpoint = daemons.endpoint("tcp", site.dir)

    def status(name):
        return daemons.status(site, name)

    # No periodic re-announcement: what a reader receives is the announcements of its joining and of the rekey.
    publisher = daemons.publisher(site, endpoint, group_size=GROUP_SIZE, reannounce_interval=3600,
                                  group_reannounce_interval=3600)
    readers = [daemons.subscriber(site, n, endpoint) for n in names]
    logs = daemons.logs(site, "publisher", victim)
    try:
        daemons.wait(lambda: all(status(n).get("epoch") == 1 for n in names), timeout=120,
                     what="the sampled readers to hold the key", logs=logs)
        assert status("publisher")["readers"] == REGISTRY
        daemons.feed(site, 20)
        daemons.wait(lambda: all(status(n).get("received") == 20 for n in names), what="the first batch", logs=logs)
        subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "readers", "--registry", site.registry_dir, "remove",
                        site.dn(victim)], check=True, capture_output=True)
        daemons.wait(lambda: status("publisher").get("epoch") == 2, timeout=30, what="the rekey", logs=logs)
        daemons.feed(site, 20, start=20)
        daemons.wait(lambda: all(status(n).get("received") == 40 for n in sampled), what="the second batch", logs=logs)
        daemons.wait(lambda: status(victim).get("rejected", {}).get("no-key", 0) > 0, what="the victim refused", logs=logs)
    finally:
        daemons.stop(publisher, *readers)
    pub = status("publisher")
    assert pub["readers"] == REGISTRY - 1 and pub["groups"] >= 64 and pub["last_rekey_cause"] == "readers-changed"
    assert status(victim)["received"] == 20 and status(victim)["epoch"] == 1
    # One envelope for 10,000 RSA recipients would be about 3.8 MB; each reader got its group's key and
    # the epoch keys: tens of kilobytes in all, for joining and for the rekey together.
    single_envelope = REGISTRY * 380
    for name in sampled:
        got = status(name)
        assert got["epoch"] == 2 and got["gaps"] == 0
        assert 0 < got["announcement_bytes"] < single_envelope / 20, (name, got["announcement_bytes"])
    print(f"rekey of {REGISTRY} readers: {pub['last_rekey_seconds']} s at the publisher, {pub['last_rekey_bytes']} bytes "
          f"emitted; per reader: {[status(n)['announcement_bytes'] for n in sampled]} bytes in all")


TREE_REGISTRY = 100_000


def test_a_hundred_thousand_readers_in_tree_mode_two_revocations(scratch):
    """Key tree mode (docs/PROTOCOL.md §4.6) on a registry of 100,000 certificates (each its own leaf), five reader
    processes, two of them behind a relay (their path requests go through it), and two revocations by registry
    file removal.  The revoked readers read nothing published after their revocation; the others lose nothing,
    and each revocation costs each of them at most 4 KB of key announcements."""
    site = scale_site(scratch, TREE_REGISTRY, materialize=5)
    names = sorted(site.readers)
    first, second, kept = names[0], names[1], names[2:]
    endpoint, relayed = daemons.endpoint("tcp", site.dir), daemons.endpoint("tcp", site.dir)

    def status(name):
        return daemons.status(site, name)

    def spent(name):
        return status(name).get("announcement_bytes", 0)

    # No periodic re-announcement: what a reader receives is what joining and each rekey send it.
    publisher = daemons.publisher(site, endpoint, rotation_mode="tree", reannounce_interval=3600)
    relay = daemons.relay(site, "relay", endpoint, relayed)
    readers = [daemons.subscriber(site, n, relayed if n in (second, kept[0]) else endpoint) for n in names]
    logs = daemons.logs(site, "publisher", "relay", *names)
    try:
        daemons.wait(lambda: all(status(n).get("epoch") == 1 for n in names), timeout=240,
                     what="every reader to hold the first key", logs=logs)
        assert status("publisher")["readers"] == TREE_REGISTRY
        daemons.feed(site, 20)
        daemons.wait(lambda: all(status(n).get("received") == 20 for n in names), what="the first batch", logs=logs)
        # Each link narrows its frame bound once, on a new socket whose subscriptions fetch the path and the
        # epoch key again: let that happen before counting what revocations cost.
        daemons.wait(lambda: all(e["max_frame"] <= 256 * 1024 for n in names
                                 for e in status(n).get("endpoints", {"-": {"max_frame": 1 << 30}}).values()),
                     what="every link to narrow its frame bound", logs=logs)
        daemons.feed(site, 20, start=20)
        daemons.wait(lambda: all(status(n).get("received") == 40 for n in names), what="the second batch", logs=logs)
        received, costs = 40, []
        for epoch, victim in ((2, first), (3, second)):
            before = {n: spent(n) for n in kept}
            (site.registry_dir / f"{fingerprint(site.certs[victim].certificate)[:16]}.pem").unlink()  # an admin revokes
            daemons.wait(lambda: status("publisher").get("epoch") == epoch, timeout=60, what="the rekey", logs=logs)
            daemons.feed(site, 20, start=received)
            received += 20
            daemons.wait(lambda: all(status(n).get("received") == received for n in kept), timeout=60,
                         what=f"the batch after revocation {epoch - 1}", logs=logs)
            daemons.wait(lambda: status(victim).get("rejected", {}).get("no-key", 0) > 0, what="the victim refused",
                         logs=logs)
            costs += [spent(name) - before[name] for name in kept]
            assert all(0 < cost <= 4096 for cost in costs[-len(kept):]), costs
    finally:
        daemons.stop(publisher, relay, *readers)
    pub = status("publisher")
    assert pub["readers"] == TREE_REGISTRY - 2 and pub["epoch"] == 3 and pub["last_rekey_cause"] == "readers-changed"
    assert status(first)["received"] == 40 and status(second)["received"] == 60
    for name in kept:
        got = status(name)
        assert got["received"] == 80 and got["gaps"] == 0 and got["epoch"] == 3
        daemons.in_stream_order(site, name, [f"job {i}" for i in range(80)])
    print(f"tree mode, {TREE_REGISTRY} readers: last rekey {pub['last_rekey_seconds']} s, {pub['last_rekey_bytes']} "
          f"bytes emitted; {pub['tree_messages']} tree messages in all; bytes per remaining reader and revocation: "
          f"{costs}")
