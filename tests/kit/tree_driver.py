"""Runs inside a fresh network namespace (``unshare -n``), started by tests/e2e/test_fanout_scale.py.

One publisher (reader groups on), a two-level relay tree -- one branch over
epgm multicast -- and a reader process for every reader of the site, spread
over the four leaves.  Mid-stream one reader is removed from the registry.
Checks that it reads nothing published after the rekey while every other
reader receives every message, in order, with no gap.  Prints OK or fails.

    python tests/kit/tree_driver.py SITE_DIR    (SITE_DIR holds the site.json of kit.pki.scale_site)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the kit

from kit import daemons, netns  # noqa: E402
from kit.pki import Pki  # noqa: E402

BATCH = 100


def main(directory: str) -> int:
    """Run the tree, stream two batches around a revocation, and check every reader's incoming queue."""
    netns.loopback_multicast()
    site = Pki.load(directory)
    d = site.dir
    multicast = "epgm://127.0.0.1;239.192.9.1:5901"
    source, level1 = "tcp://127.0.0.1:5700", "tcp://127.0.0.1:5701"  # a namespace of our own: any port is free
    leaves = ["tcp://127.0.0.1:5711", f"ipc://{d}/leaf.ipc", multicast, "tcp://127.0.0.1:5721"]

    procs = [daemons.publisher(site, source, group_size="8", reannounce_interval="0.5", group_reannounce_interval="1")]
    relays = [("r1", source, level1), ("r2", source, multicast),  # level 1: tcp, and the multicast branch
              ("r1a", level1, leaves[0]), ("r1b", level1, leaves[1]), ("r2a", multicast, leaves[3])]  # level 2
    for name, upstream, downstream in relays:
        procs.append(daemons.relay(site, name, upstream, downstream, stream=daemons.STREAM))
    readers = sorted(site.readers)
    victim = readers[len(readers) // 2]
    for i, name in enumerate(readers):
        procs.append(daemons.subscriber(site, name, leaves[i % 4], status_interval="0.3"))

    def received(name) -> int:
        """How many messages reader ``name`` says it received."""
        return daemons.status(site, name).get("received", 0)

    log_files = daemons.logs(site, "publisher", victim)
    others = [n for n in readers if n != victim]
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in readers), timeout=120,
                     what=f"all {len(readers)} readers to hold the key", logs=log_files)
        daemons.feed(site, BATCH)
        daemons.wait(lambda: all(received(n) == BATCH for n in readers), timeout=120, what="the first batch everywhere",
                     logs=log_files)
        subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "readers", "--registry", site.registry_dir, "remove",
                        site.dn(victim)], check=True, capture_output=True)
        daemons.wait(lambda: daemons.status(site, "publisher").get("epoch") == 2, timeout=30, what="the rekey",
                     logs=log_files)
        daemons.feed(site, BATCH, start=BATCH)
        daemons.wait(lambda: all(received(n) == 2 * BATCH for n in others), timeout=120,
                     what="the second batch at every other reader", logs=log_files)
        daemons.wait(lambda: daemons.status(site, victim).get("rejected", {}).get("no-key", 0) > 0, timeout=30,
                     what="the revoked reader to refuse the new epoch's frames", logs=log_files)
    finally:
        daemons.stop(*procs)
    for name in others:
        bodies = [m["body"] for m in daemons.incoming(site, name)]
        assert bodies == [f"job {i}" for i in range(2 * BATCH)], (name, bodies[:5], len(bodies))  # all, in order
        state = daemons.status(site, name)
        assert state["gaps"] == 0 and state["epoch"] == 2, (name, state)
    bodies = [m["body"] for m in daemons.incoming(site, victim)]
    assert bodies == [f"job {i}" for i in range(BATCH)], (victim, len(bodies))  # nothing after the rekey
    assert daemons.status(site, victim)["epoch"] == 1, daemons.status(site, victim)
    print(f"OK {len(readers)} readers, {len(relays)} relays, victim {victim}: {len(bodies)} of {2 * BATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
