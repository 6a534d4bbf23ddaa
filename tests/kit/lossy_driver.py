"""Lossy links for tests/e2e/test_lossy_links.py: a forwarder that loses whole ZeroMQ messages, and the
lossy-links scenario that runs inside a fresh network namespace (``unshare -n``).

    python tests/kit/lossy_driver.py forward IN OUT --report FILE [--drop PERCENT] [--hwm N] [--sndbuf BYTES] [--seed S]
    python tests/kit/lossy_driver.py links SITE_DIR        (inside unshare -n; SITE_DIR holds kit.pki's site.json)

``forward`` is a relay as ``zmqsec relay`` is (XSUB connected to IN, XPUB bound on OUT, subscriptions passed
upstream) that can lose messages, and whose queue to its subscriber holds ``--hwm`` messages (what overflows
it is counted, as ``overflowed``; a relay's XPUB drops it silently).  TCP
repairs lost packets, so a lossy tcp link never loses a ZeroMQ message by packet loss alone: this forwarder
is what makes holes on one.  SIGUSR1 switches the loss on (it starts off) and off again: while on, ``--drop``
percent of the messages, at random, are discarded whole; SIGUSR2 loses the next checkpoint only.  What it
forwarded and lost, by frame kind, goes to FILE (JSON) every 0.1 s and on SIGTERM.

``links`` runs the publisher, an archive relay feeding an epgm branch, the lossy forwarder on a tcp link,
and a reader on each, with nftables dropping 5% of the packets on both (docs in :func:`links`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the kit

STREAM_KINDS = {b"D": "data", b"K": "announcement", b"S": "checkpoint", b"G": "group", b"R": "run"}


def forward(upstream: str, downstream: str, report: Path, drop: float, hwm: int, sndbuf: int, seed: int) -> int:
    """Forward until SIGTERM, losing ``drop`` percent of the messages while the loss is on; counts by frame kind
    into ``report``."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every reader's subscription reaches the publisher, as a relay's does
    xpub.setsockopt(zmq.SNDHWM, hwm)
    # A full queue refuses the message (EAGAIN) instead of dropping it unseen, so that overflows are counted;
    # with the one subscriber each test gives it, what is lost is exactly what an XPUB would drop.
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    if sndbuf:
        xpub.setsockopt(zmq.SNDBUF, sndbuf)  # a fixed kernel buffer: the kernel then holds little for a stopped reader
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.LINGER, 0)
    xpub.bind(downstream)
    xsub.connect(upstream)
    state = {"stop": False, "lossy": False, "lose_checkpoint": False}
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: state.update(lossy=not state["lossy"]))
    signal.signal(signal.SIGUSR2, lambda *_: state.update(lose_checkpoint=True))
    counts = {"forwarded": collections.Counter(), "dropped": collections.Counter(), "overflowed": collections.Counter()}

    def write_report() -> None:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seed": seed, "lossy": state["lossy"], "lose_checkpoint": state["lose_checkpoint"],
                                   **counts}))
        os.replace(tmp, report)

    poller = zmq.Poller()
    poller.register(xsub, zmq.POLLIN)
    poller.register(xpub, zmq.POLLIN)
    next_report = 0.0
    while not state["stop"]:
        try:
            ready = dict(poller.poll(100))
        except zmq.ZMQError:  # EINTR from a signal
            continue
        if xsub in ready:
            for _ in range(1000):
                try:
                    parts = xsub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind = STREAM_KINDS.get(parts[0][-1:], "other")
                if kind == "checkpoint" and state["lose_checkpoint"]:
                    state["lose_checkpoint"] = False
                    counts["dropped"][kind] += 1
                    continue
                if state["lossy"] and rng.random() * 100 < drop:
                    counts["dropped"][kind] += 1  # the whole message: every part of it
                    continue
                try:
                    xpub.send_multipart(parts, zmq.NOBLOCK)
                except zmq.Again:
                    counts["overflowed"][kind] += 1
                    continue
                counts["forwarded"][kind] += 1
        if xpub in ready:
            for _ in range(1000):
                try:
                    xsub.send(xpub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + 0.1
            write_report()
    write_report()
    xsub.close()
    xpub.close()
    return 0


def forwarder(directory: Path, name: str, upstream: str, downstream: str, *, drop: float = 0.0,
              hwm: int = 100_000, sndbuf: int = 0, seed: int | None = None) -> subprocess.Popen:
    """Start ``forward`` as a process logging to ``NAME.log`` in ``directory``, reporting into ``NAME.json``."""
    seed = random.randrange(1 << 32) if seed is None else seed
    return subprocess.Popen([sys.executable, __file__, "forward", upstream, downstream, "--report",
                             str(directory / f"{name}.json"), "--drop", str(drop), "--hwm", str(hwm),
                             "--sndbuf", str(sndbuf), "--seed", str(seed)],
                            stdout=open(directory / f"{name}.log", "ab"), stderr=subprocess.STDOUT)


def forwarder_report(directory: Path, name: str) -> dict:
    """What forwarder ``name`` last reported ({} before its first report)."""
    try:
        return json.loads((directory / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


# -- the lossy-links scenario (inside a network namespace of its own: any port is free) ------------------

SOURCE, PUBLISHER_REPLAY = "tcp://127.0.0.1:5600", "tcp://127.0.0.1:5610"
ARCHIVE_REPLAY = "tcp://127.0.0.1:5611"
BRANCH_PORT, LINK_PORT = 5601, 5620
BRANCH = f"epgm://127.0.0.1;239.192.8.1:{BRANCH_PORT}"  # the archive relay's multicast output
LINK = f"tcp://127.0.0.1:{LINK_PORT}"  # the lossy forwarder's output: the tcp link
LOSS_PERCENT = 5
WARM_UP, LOSSY, FINAL = 50, 600, 50  # records before, during and after the loss
LOSSY_RATE = 200  # records/s during the loss: a checkpoint every few records, so checkpoints are lost too
READERS = {"portal": BRANCH, "central": LINK}
NFT_TABLE = "zmqsec_lossy"

# Loss on the input hook (after loopback), so that no sender sees its packets refused.
#  * epgm branch: 5% of the PGM packets.  PGM repairs such loss itself (NAK, then a retransmission, RDATA)
#    while the sender's window still holds the data, and ZeroMQ would see no hole; so every RDATA is lost too,
#    as for a receiver that fell out of the window.  What PGM then gives up on is a hole in the ZeroMQ stream.
#  * tcp link: 5% of the segments the forwarder sends to its reader; TCP retransmits them, so they cost time,
#    never a message.  The holes on the tcp link are the forwarder's: it discards 5% of the ZeroMQ messages.
NFT_RULES = f"""table inet {NFT_TABLE} {{
 chain input {{
  type filter hook input priority 0;
  udp dport {BRANCH_PORT} @th,96,8 5 counter drop comment "pgm-rdata"
  udp dport {BRANCH_PORT} numgen random mod 100 < {LOSS_PERCENT} counter drop comment "pgm"
  tcp sport {LINK_PORT} numgen random mod 100 < {LOSS_PERCENT} counter drop comment "tcp"
 }}
}}
"""


def nft_counters() -> dict:
    """Packets dropped so far by each rule of the loss table, by the rule's comment."""
    listing = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", NFT_TABLE], check=True,
                                        capture_output=True, text=True).stdout)
    counters = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule:
            counters[rule["comment"]] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return counters


def paced_feed(site, count: int, rate: float, start: int = 0) -> None:
    """Drop records ``start`` .. ``start + count - 1`` into the outgoing spool at about ``rate`` per second."""
    from kit import daemons

    began, done = time.monotonic(), 0
    while done < count:
        due = min(count, int((time.monotonic() - began) * rate) + 1)
        if due > done:
            daemons.feed(site, due - done, start=start + done)
            done = due
        time.sleep(0.02)  # the pace of the feed itself, not a wait for an event


def links(directory: str) -> int:
    """Publisher (journal, replay) -> archive relay (journal, replay) -> epgm branch -> reader portal, and
    publisher -> lossy forwarder -> tcp link -> reader central; both readers list the archive's replay first,
    the publisher's second.  A warm-up batch, a batch under 5% loss on both links, the loss ended, a final
    batch; then prints ``RESULT {json}``: the packets and messages lost, for the test to check beside the
    readers' spools and status files."""
    from kit import daemons, netns
    from kit.pki import Pki
    from zmqsec.drivers.journal import JournalReader

    netns.loopback_multicast()
    site = Pki.load(directory)
    d = site.dir
    total = WARM_UP + LOSSY + FINAL
    logs = daemons.logs(site, "publisher", "archive", "lossy", *READERS)
    procs = [daemons.publisher(site, SOURCE, journal=d / "publisher-journal", replay_endpoint=PUBLISHER_REPLAY,
                               reannounce_interval="0.5"),
             daemons.relay(site, "archive", SOURCE, BRANCH, stream=daemons.STREAM, journal=d / "archive-journal",
                           replay_endpoint=ARCHIVE_REPLAY)]
    lossy = forwarder(d, "lossy", SOURCE, LINK, drop=LOSS_PERCENT)
    procs.append(lossy)
    procs += [daemons.subscriber(site, name, endpoint, replay=[ARCHIVE_REPLAY, PUBLISHER_REPLAY])
              for name, endpoint in READERS.items()]

    def stored(count: int) -> bool:
        return all(daemons.status(site, n).get("stored") == count for n in READERS)

    def archived(run: bytes, last: int) -> bool:
        """Has the archive relay passed the run up to ``last`` on to the branch (it journals after sending)?"""
        reader = JournalReader(d / "archive-journal")
        try:
            info = reader.run(daemons.STREAM.encode(), run)
            return info is not None and info.last_seq >= last
        finally:
            reader.close()

    def through_forwarder() -> int:
        report = forwarder_report(d, "lossy")
        return report["forwarded"].get("data", 0) + report["dropped"].get("data", 0)

    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in READERS), timeout=30,
                     what="both readers to hold the key", logs=logs)
        daemons.wait(lambda: forwarder_report(d, "lossy"), what="the forwarder's first report", logs=logs)
        daemons.feed(site, WARM_UP)
        daemons.wait(lambda: stored(WARM_UP), timeout=30, what="the warm-up batch at both readers", logs=logs)

        subprocess.run(["nft", "-f", "-"], input=NFT_RULES, text=True, check=True)
        lossy.send_signal(signal.SIGUSR1)
        daemons.wait(lambda: forwarder_report(d, "lossy").get("lossy"), what="the forwarder's loss on", logs=logs)
        paced_feed(site, LOSSY, LOSSY_RATE, start=WARM_UP)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == WARM_UP + LOSSY, timeout=30,
                     what="the lossy batch published", logs=logs)
        daemons.wait(lambda: through_forwarder() >= WARM_UP + LOSSY, timeout=30,
                     what="the lossy batch through the forwarder", logs=logs)
        run = bytes.fromhex(daemons.status(site, "central")["position"]["run"])
        daemons.wait(lambda: archived(run, WARM_UP + LOSSY), timeout=30, what="the lossy batch onto the branch",
                     logs=logs)

        # The loss ends and the stream goes on: a reader learns of a lost tail only from later frames
        # (see test_lossy_links.py's expected failures).
        dropped = {"nft": nft_counters(), "forwarder": forwarder_report(d, "lossy")["dropped"]}
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], check=True)
        lossy.send_signal(signal.SIGUSR1)
        daemons.wait(lambda: not forwarder_report(d, "lossy").get("lossy"), what="the forwarder's loss off", logs=logs)
        daemons.feed(site, FINAL, start=WARM_UP + LOSSY)
        daemons.wait(lambda: stored(total), timeout=60, what=f"all {total} records at both readers", logs=logs)
    finally:
        daemons.stop(*procs)
    print("RESULT " + json.dumps({"total": total, **dropped}))
    return 0


def main(argv: list[str]) -> int:
    """The command line of the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("forward")
    p.add_argument("upstream")
    p.add_argument("downstream")
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--hwm", type=int, default=100_000)
    p.add_argument("--sndbuf", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("links")
    p.add_argument("site_dir")
    args = parser.parse_args(argv)
    if args.command == "forward":
        return forward(args.upstream, args.downstream, args.report, args.drop, args.hwm, args.sndbuf, args.seed)
    return links(args.site_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
