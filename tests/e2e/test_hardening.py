"""What a stranger with no certificate sends cannot crash, stall or bloat a daemon (docs/PROTOCOL.md §9)."""

from __future__ import annotations

import subprocess
import sys

from kit import daemons
from zmqsec.protocol.primitives import MAX_XPUB_MESSAGE

# A stranger: connect to an XPUB, send one subscription message of SIZE bytes, and vanish without
# closing (os._exit), so only the daemon's side tears the connection down.  Over the bound the daemon
# drops the connection itself, which the stranger's socket monitor shows.
_OVERSIZED_SUBSCRIBER = """
import os, sys, time, zmq
from zmq.utils.monitor import recv_monitor_message
endpoint, size, bound = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = zmq.Context().socket(zmq.XSUB)
monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
s.connect(endpoint)

def seen(event):
    while monitor.poll(10000):
        if recv_monitor_message(monitor)["event"] == event:
            return True
    return False

if not seen(zmq.EVENT_HANDSHAKE_SUCCEEDED):
    sys.exit("no connection to " + endpoint)
s.send(b"\\x01" + b"A" * size)
if size > bound:
    if not seen(zmq.EVENT_DISCONNECTED):
        sys.exit("the daemon kept a connection that sent %d bytes" % size)
else:
    time.sleep(0.5)  # an accepted subscription is not acknowledged: time for it to arrive before we vanish
os._exit(0)
"""


def _attack(endpoint: str) -> None:
    # Just under the sockets' bound (accepted, then dropped with the connection), and far over it.
    for size in (MAX_XPUB_MESSAGE - 2, 1_000_000):
        subprocess.run([sys.executable, "-c", _OVERSIZED_SUBSCRIBER, endpoint, str(size), str(MAX_XPUB_MESSAGE)],
                       timeout=30, check=True)


def test_an_oversized_subscription_drops_that_connection_not_the_relay_or_the_publisher(site):
    d = site.dir
    source, relayed = daemons.endpoint("tcp", d), daemons.endpoint("tcp", d)
    logs = daemons.logs(site, "publisher", "relay", "portal", "central")
    pub = daemons.publisher(site, source)
    relay = daemons.relay(site, "relay", source, relayed)
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
