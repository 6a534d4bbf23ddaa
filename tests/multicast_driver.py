"""Runs inside a fresh network namespace (``unshare -n``), started by test_relay_multicast.py.

Brings up loopback with multicast and a multicast route, then: a publisher
binds tcp and the multicast group directly; a relay re-publishes the tcp
stream on a second multicast group; one reader joins each group.  Every
message must reach both, in order, with no gap.  Prints OK or exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))

import daemons  # noqa: E402
from zmqsec.spool import OutgoingSpool  # noqa: E402


def main(directory: str, transport: str) -> int:
    for cmd in ("ip link set lo up", "ip link set lo multicast on", "ip route add 224.0.0.0/4 dev lo"):
        subprocess.run(cmd, shell=True, check=True)
    raw = json.loads((Path(directory) / "site.json").read_text())
    d = Path(raw["dir"])
    site = {"dir": d, "ca": SimpleNamespace(trust_dir=Path(raw["trust_dir"])),
            "certs": {n: SimpleNamespace(cert_path=Path(c), key_path=Path(k)) for n, (c, k) in raw["certs"].items()}}
    # NORM derives its node id from the address: processes sharing one host need distinct ids ("norm://ID,...").
    def endpoint(group_port: str, node: int) -> str:
        return f"epgm://127.0.0.1;{group_port}" if transport == "epgm" else f"norm://{node},127.0.0.1;{group_port}"

    group, relayed = endpoint("239.192.7.1:5601", 1), endpoint("239.192.7.2:5602", 2)
    portal_in, central_in = endpoint("239.192.7.1:5601", 11), endpoint("239.192.7.2:5602", 12)
    tcp = "tcp://127.0.0.1:5600"
    logs = [d / n for n in ("publisher.log", "relay.log", "portal.log", "central.log")]
    # libzmq 4.3's NORM receivers only sync to a sender that starts after them: over norm the readers
    # start first; over epgm they join late, as a reader behind multicast normally does.
    subs = []
    if transport == "norm":
        subs = [daemons.subscriber(site, "portal", portal_in), daemons.subscriber(site, "central", central_in)]
        daemons.wait(lambda: all(daemons.status(site, n).get("role") for n in ("portal", "central")),
                     what="NORM readers up before the senders", logs=[d / "portal.log", d / "central.log"])
    pub = daemons.cli("--log-level", "INFO", "publish", "--stream", "apel.jobs", "--endpoint", tcp, "--endpoint", group,
                      "--certificate", site["certs"]["publisher"].cert_path, "--key", site["certs"]["publisher"].key_path,
                      "--capath", site["ca"].trust_dir, "--registry", d / "readers.d", "--outgoing", d / "outgoing",
                      "--status-file", d / "publisher.json", "--status-interval", "0.2", "--poll-interval", "0.05",
                      "--reannounce-interval", "0.5", log=d / "publisher.log")
    relay = daemons.cli("relay", "--in", tcp, "--out", relayed, "--stream", "apel.jobs", log=d / "relay.log")
    if transport == "epgm":
        subs = [daemons.subscriber(site, "portal", portal_in), daemons.subscriber(site, "central", central_in)]
    try:
        # Multicast shows no subscriptions: readers get the key from the periodic re-announcement.
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in ("portal", "central")),
                     timeout=20, what="multicast readers to get the key", logs=logs)
        spool = OutgoingSpool(d / "outgoing")
        for i in range(100):
            spool.add(b"multicast %d" % i)
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 100 for n in ("portal", "central")),
                     timeout=60, what="multicast delivery", logs=logs)
        for name in ("portal", "central"):
            bodies = sorted(m["body"] for m in daemons.incoming(site, name))
            assert bodies == sorted(f"multicast {i}" for i in range(100)), name
        daemons.wait(lambda: all(daemons.status(site, n).get("gaps") == 0 and daemons.status(site, n).get("received") == 100
                                 for n in ("portal", "central")), what="final status", logs=logs)
    finally:
        daemons.stop(pub, relay, *subs)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
