"""Fan-out at scale with real processes: a relay tree with a multicast branch and 50+ readers, and a
registry of 10,000 readers whose rekeys send each reader a bounded announcement."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kit import daemons, netns
from kit.pki import scale_site, scratch_dir

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
