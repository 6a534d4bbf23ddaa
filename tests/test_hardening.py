"""What a stranger with no certificate sends cannot crash, stall or bloat a daemon (docs/PROTOCOL.md §9)."""

from __future__ import annotations

import subprocess
import sys

import daemons
from zmqsec.primitives import MAX_XPUB_MESSAGE

# A stranger: connect to an XPUB, send one subscription message of SIZE bytes, and vanish without
# closing (os._exit), so only the daemon's side tears the connection down.
_OVERSIZED_SUBSCRIBER = """
import os, sys, time, zmq
s = zmq.Context().socket(zmq.XSUB)
s.connect(sys.argv[1])
time.sleep(0.3)
s.send(b"\\x01" + b"A" * int(sys.argv[2]))
time.sleep(0.5)
os._exit(0)
"""


def _attack(endpoint: str) -> None:
    # Just under the sockets' bound (accepted, then dropped with the connection), and far over it.
    for size in (MAX_XPUB_MESSAGE - 2, 1_000_000):
        subprocess.run([sys.executable, "-c", _OVERSIZED_SUBSCRIBER, endpoint, str(size)], timeout=30, check=True)


def test_an_oversized_subscription_drops_that_connection_not_the_relay_or_the_publisher(site):
    d = site["dir"]
    source, relayed = daemons.endpoint("tcp", d), daemons.endpoint("tcp", d)
    logs = [d / n for n in ("publisher.log", "relay.log", "portal.log", "central.log")]
    pub = daemons.publisher(site, source)
    relay = daemons.cli("--log-level", "INFO", "relay", "--in", source, "--out", relayed, log=d / "relay.log")
    subs = [daemons.subscriber(site, "portal", source), daemons.subscriber(site, "central", relayed)]
    procs = [pub, relay, *subs]
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in ("portal", "central")),
                     what="readers to get the key", logs=logs)
        # Before the fix, libzmq's subscription trie recursed once per byte and the relay died (SIGSEGV)
        # when the attacker's connection went away.
        _attack(relayed)
        _attack(source)
        daemons.feed(site, 30, b"after the attack %d")
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 30 for n in ("portal", "central")),
                     what="delivery after the attack", logs=logs)
        assert relay.poll() is None and pub.poll() is None, "a daemon died"
    finally:
        daemons.stop(*procs)
    assert relay.returncode == 0 and pub.returncode == 0
    for name in ("portal", "central"):
        assert sorted(m["body"] for m in daemons.incoming(site, name)) == sorted(f"after the attack {i}" for i in range(30))
