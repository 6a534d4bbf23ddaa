"""Fan-out at scale with real processes: a relay tree with a multicast branch and 50+ readers, and a
registry of 10,000 readers whose rekeys send each reader a bounded announcement."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import daemons
import scale
from zmqsec.spool import OutgoingSpool

TREE_READERS = 52
REGISTRY = 10_000
GROUP_SIZE = 128


@pytest.fixture
def scratch():
    path = scale.scratch()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) creates the test's network namespace")
def test_a_relay_tree_with_a_multicast_branch_and_a_revocation_under_load(scratch):
    scale.make_site(scratch, TREE_READERS, materialize=TREE_READERS)
    driver = Path(__file__).with_name("tree_driver.py")
    result = subprocess.run(["unshare", "-n", sys.executable, str(driver), str(scratch)],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"OK {TREE_READERS} readers" in result.stdout


def test_ten_thousand_readers_each_receive_a_bounded_announcement(scratch):
    site = scale.make_site(scratch, REGISTRY, materialize=4)
    d = Path(site["dir"])
    names = sorted(site["readers"])
    victim, sampled = names[0], names[1:]
    endpoint = daemons.endpoint("tcp", d)
    status = lambda name: json.loads((d / f"{name}.json").read_text()) if (d / f"{name}.json").exists() else {}  # noqa: E731
    # No periodic re-announcement: what a reader receives is the announcements of its joining and of the rekey.
    publisher = daemons.cli("--log-level", "INFO", "publish", "--stream", "apel.jobs", "--endpoint", endpoint,
                            "--certificate", site["publisher"][0], "--key", site["publisher"][1],
                            "--capath", site["trust_dir"], "--registry", site["registry"], "--outgoing", d / "outgoing",
                            "--status-file", d / "publisher.json", "--status-interval", "0.2", "--poll-interval", "0.05",
                            "--group-size", GROUP_SIZE, "--reannounce-interval", 3600, "--group-reannounce-interval", 3600,
                            log=d / "publisher.log")
    readers = [daemons.cli("--log-level", "INFO", "subscribe", "--stream", "apel.jobs", "--endpoint", endpoint,
                           "--certificate", site["readers"][n][0], "--key", site["readers"][n][1],
                           "--capath", site["trust_dir"], "--publisher-dn", site["publisher_dn"], "--incoming", d / f"in-{n}",
                           "--status-file", d / f"{n}.json", "--status-interval", "0.2", log=d / f"{n}.log")
               for n in names]
    logs = [d / "publisher.log", d / f"{victim}.log"]
    spool = OutgoingSpool(d / "outgoing")
    try:
        daemons.wait(lambda: all(status(n).get("epoch") == 1 for n in names), timeout=120,
                     what="the sampled readers to hold the key", logs=logs)
        assert status("publisher")["readers"] == REGISTRY
        for i in range(20):
            spool.add(b"job %d" % i)
        daemons.wait(lambda: all(status(n).get("received") == 20 for n in names), what="the first batch", logs=logs)
        subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "readers", "--registry", site["registry"], "remove",
                        f"/O=zmqsec scale/CN={victim}.example.org"], check=True, capture_output=True)
        daemons.wait(lambda: status("publisher").get("epoch") == 2, timeout=30, what="the rekey", logs=logs)
        for i in range(20, 40):
            spool.add(b"job %d" % i)
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
