"""Runs inside a fresh network namespace (``unshare -n``), started by tests/e2e/test_relay_multicast.py.

Brings up loopback with multicast and a multicast route, then: a publisher
binds tcp and the multicast group directly; a relay re-publishes the tcp
stream on a second multicast group; one reader joins each group.  Every
message must reach both, in order, with no gap.  Prints OK or exits non-zero.

    python tests/kit/multicast_driver.py SITE_DIR epgm|norm    (SITE_DIR holds the site.json of kit.pki.Pki.save)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the kit

from kit import daemons, netns  # noqa: E402
from kit.pki import Pki  # noqa: E402

READERS = ("portal", "central")


def main(directory: str, transport: str) -> int:
    """Run the publisher, the relay and a reader on each group; check every message reached both readers."""
    netns.loopback_multicast()
    site = Pki.load(directory)

    # NORM derives its node id from the address: processes sharing one host need distinct ids ("norm://ID,...").
    def endpoint(group_port: str, node: int) -> str:
        """The group's endpoint in the transport under test (``node``: the NORM node id)."""
        return f"epgm://127.0.0.1;{group_port}" if transport == "epgm" else f"norm://{node},127.0.0.1;{group_port}"

    group, relayed = endpoint("239.192.7.1:5601", 1), endpoint("239.192.7.2:5602", 2)
    portal_in, central_in = endpoint("239.192.7.1:5601", 11), endpoint("239.192.7.2:5602", 12)
    tcp = "tcp://127.0.0.1:5600"  # a namespace of our own: any port is free
    logs = daemons.logs(site, "publisher", "relay", *READERS)
    # libzmq 4.3's NORM receivers only sync to a sender that starts after them: over norm the readers
    # start first; over epgm they join late, as a reader behind multicast normally does.
    subs = []
    if transport == "norm":
        subs = [daemons.subscriber(site, "portal", portal_in), daemons.subscriber(site, "central", central_in)]
        daemons.wait(lambda: all(daemons.status(site, n).get("role") for n in READERS),
                     what="NORM readers up before the senders", logs=daemons.logs(site, *READERS))
    pub = daemons.publisher(site, tcp, group, reannounce_interval="0.5")
    relay = daemons.relay(site, "relay", tcp, relayed, stream=daemons.STREAM)
    if transport == "epgm":
        subs = [daemons.subscriber(site, "portal", portal_in), daemons.subscriber(site, "central", central_in)]
    try:
        # Multicast shows no subscriptions: readers get the key from the periodic re-announcement.
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in READERS),
                     timeout=20, what="multicast readers to get the key", logs=logs)
        daemons.feed(site, 100, b"multicast %d")
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 100 for n in READERS),
                     timeout=60, what="multicast delivery", logs=logs)
        for name in READERS:
            bodies = sorted(m["body"] for m in daemons.incoming(site, name))
            assert bodies == sorted(f"multicast {i}" for i in range(100)), name
        daemons.wait(lambda: all(daemons.status(site, n).get("gaps") == 0 and daemons.status(site, n).get("received") == 100
                                 for n in READERS), what="final status", logs=logs)
    finally:
        daemons.stop(pub, relay, *subs)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
