"""Runs inside a fresh network namespace (``unshare -n``), started by test_fanout_scale.py.

One publisher (reader groups on), a two-level relay tree -- one branch over
epgm multicast -- and a reader process for every reader of the site, spread
over the four leaves.  Mid-stream one reader is removed from the registry.
Checks that it reads nothing published after the rekey while every other
reader receives every message, in order, with no gap.  Prints OK or fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import daemons  # noqa: E402
from zmqsec.spool import IncomingSpool, OutgoingSpool  # noqa: E402

STREAM = "apel.jobs"
BATCH = 100


def main(directory: str) -> int:
    for cmd in ("ip link set lo up", "ip link set lo multicast on", "ip route add 224.0.0.0/4 dev lo"):
        subprocess.run(cmd, shell=True, check=True)
    site = json.loads((Path(directory) / "site.json").read_text())
    d = Path(site["dir"])
    logs = d / "logs"
    logs.mkdir()
    status = d / "status"
    status.mkdir()
    multicast = "epgm://127.0.0.1;239.192.9.1:5901"
    source, level1 = "tcp://127.0.0.1:5700", "tcp://127.0.0.1:5701"
    leaves = ["tcp://127.0.0.1:5711", f"ipc://{d}/leaf.ipc", multicast, "tcp://127.0.0.1:5721"]

    def run(name, *args):
        return daemons.cli("--log-level", "INFO", *map(str, args), log=logs / f"{name}.log")

    procs = [run("publisher", "publish", "--stream", STREAM, "--endpoint", source,
                 "--certificate", site["publisher"][0], "--key", site["publisher"][1], "--capath", site["trust_dir"],
                 "--registry", site["registry"], "--outgoing", d / "outgoing", "--status-file", status / "publisher.json",
                 "--status-interval", "0.2", "--poll-interval", "0.05", "--group-size", "8",
                 "--reannounce-interval", "0.5", "--group-reannounce-interval", "1")]
    relays = [("r1", source, level1), ("r2", source, multicast),  # level 1: tcp, and the multicast branch
              ("r1a", level1, leaves[0]), ("r1b", level1, leaves[1]), ("r2a", multicast, leaves[3])]  # level 2
    for name, inp, out in relays:
        procs.append(run(name, "relay", "--in", inp, "--out", out, "--stream", STREAM))
    readers = sorted(site["readers"])
    victim = readers[len(readers) // 2]
    for i, name in enumerate(readers):
        cert, key = site["readers"][name]
        procs.append(run(name, "subscribe", "--stream", STREAM, "--endpoint", leaves[i % 4], "--certificate", cert,
                         "--key", key, "--capath", site["trust_dir"], "--publisher-dn", site["publisher_dn"],
                         "--incoming", d / "in" / name, "--status-file", status / f"{name}.json", "--status-interval", "0.3"))

    def state(name) -> dict:
        try:
            return json.loads((status / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def received(name) -> int:
        return state(name).get("received", 0)

    spool = OutgoingSpool(d / "outgoing")
    log_files = [logs / "publisher.log", logs / f"{victim}.log"]
    try:
        daemons.wait(lambda: all(state(n).get("epoch") == 1 for n in readers), timeout=120,
                     what=f"all {len(readers)} readers to hold the key", logs=log_files)
        for i in range(BATCH):
            spool.add(b"job %d" % i)
        daemons.wait(lambda: all(received(n) == BATCH for n in readers), timeout=120, what="the first batch everywhere",
                     logs=log_files)
        subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "readers", "--registry", site["registry"], "remove",
                        f"/O=zmqsec scale/CN={victim}.example.org"], check=True, capture_output=True)
        daemons.wait(lambda: state("publisher").get("epoch") == 2, timeout=30, what="the rekey", logs=log_files)
        for i in range(BATCH, 2 * BATCH):
            spool.add(b"job %d" % i)
        others = [n for n in readers if n != victim]
        daemons.wait(lambda: all(received(n) == 2 * BATCH for n in others), timeout=120,
                     what="the second batch at every other reader", logs=log_files)
        daemons.wait(lambda: state(victim).get("rejected", {}).get("no-key", 0) > 0, timeout=30,
                     what="the revoked reader to refuse the new epoch's frames", logs=log_files)
    finally:
        daemons.stop(*procs)
    for name in others:
        bodies = [m["body"] for m in IncomingSpool(d / "in" / name).messages()]
        assert bodies == [f"job {i}" for i in range(2 * BATCH)], (name, bodies[:5], len(bodies))  # all, in order
        assert state(name)["gaps"] == 0 and state(name)["epoch"] == 2, (name, state(name))
    bodies = [m["body"] for m in IncomingSpool(d / "in" / victim).messages()]
    assert bodies == [f"job {i}" for i in range(BATCH)], (victim, len(bodies))  # nothing after the rekey
    assert state(victim)["epoch"] == 1, state(victim)
    print(f"OK {len(readers)} readers, {len(relays)} relays, victim {victim}: {len(bodies)} of {2 * BATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
