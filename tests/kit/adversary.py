"""Attackers for tests/e2e/test_hardening.py, each a small process of its own (docs/PROTOCOL.md §9).

    python tests/kit/adversary.py relay IN OUT MODE --report FILE [--count N] [--seconds S]
    python tests/kit/adversary.py subscriptions ENDPOINT MODE --report FILE [--seconds S]

``relay`` is a malicious keyless relay (XSUB connected to IN, XPUB bound on OUT, subscriptions passed upstream)
that forwards the stream and attacks its readers:

- ``swap-checkpoints``: every checkpoint goes out after the next one (a held one after 0.5 s at the latest);
- ``rehead``: 2 s after the first genuine epoch announcement, ``--count`` copies of it under other epochs
  and runs;
- ``junk``: undecodable frames as fast as it can, on the stream's data topic, for ``--seconds``;
- ``oversized``: once a reader subscribed, one message of ``--count`` bytes, then honest forwarding;
- ``bloat``: data frames of 16 MB under an epoch nobody announced (of the live run, once a record showed
  its id) or a made-up run, as fast as it can, for ``--seconds``.

``subscriptions`` is a stranger with no certificate at a publisher's or relay's XPUB:

- ``same``: one subscription message re-sent as fast as it can, for ``--seconds``;
- ``distinct``: distinct short subscriptions as fast as it can, for ``--seconds``;
- ``distinct-valid``: distinct well-formed group topics of the stream (every tag of up to 16 bits, over and
  over), as fast as it can, for ``--seconds``.

It counts the times the daemon closed its connection (``disconnected``); libzmq connects again by itself.
``--source`` connects from another local address (127.0.0.2, say), as a stranger on another host would.

What it did (counts, and ``done`` once the attack is over) goes to FILE as JSON every 0.2 s and at the end.
Forwarding goes on after the attack until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the kit

from kit.daemons import STREAM  # noqa: E402

TOPIC = STREAM.encode() + b"\x00"
DATA, ANNOUNCEMENT, CHECKPOINT = TOPIC + b"D", TOPIC + b"K", TOPIC + b"S"


class Report:
    """Counts written to a JSON file now and then, and at the end."""

    def __init__(self, path: Path) -> None:
        self.path, self.counts, self._next = path, {"done": False}, 0.0

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def write(self, force: bool = False) -> None:
        if force or time.monotonic() >= self._next:
            self._next = time.monotonic() + 0.2
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.counts))
            os.replace(tmp, self.path)


def _stopper() -> dict:
    state = {"stop": False}
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    return state


def _reheaded(parts: list[bytes], i: int) -> list[bytes]:
    """A genuine epoch announcement under another epoch, and every other copy under another run as well."""
    version, stream_id, epoch, envelope, signature = msgpack.unpackb(parts[1])
    if i % 2:
        stream_id = i.to_bytes(16, "big")
    return [parts[0], msgpack.packb([version, stream_id, epoch + 1000 + i, envelope, signature])]


def relay(upstream: str, downstream: str, mode: str, report: Report, count: int, seconds: float) -> None:
    state = _stopper()
    ctx = zmq.Context.instance()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1_000_000)
    xpub.bind(downstream)
    xsub.connect(upstream)
    held: list[tuple[list[bytes], float]] = []  # swap-checkpoints: the checkpoint waiting for the next one
    subscribed = attack_until = recorded = live = None
    filler = bytes(16_000_000)
    poller = zmq.Poller()
    poller.register(xsub, zmq.POLLIN)
    poller.register(xpub, zmq.POLLIN)
    while not state["stop"]:
        attacking = attack_until is not None and time.monotonic() < attack_until
        for sock, _ in poller.poll(0 if attacking else 50):
            if sock is xpub:
                message = xpub.recv()
                xsub.send(message)
                if message[:1] == b"\x01" and subscribed is None:
                    subscribed = time.monotonic()
                continue
            parts = xsub.recv_multipart()
            if mode == "swap-checkpoints" and parts[0] == CHECKPOINT:
                if held:
                    xpub.send_multipart(parts)
                    xpub.send_multipart(held.pop()[0])
                    report.add("swapped")
                else:
                    held.append((parts, time.monotonic()))
                continue
            xpub.send_multipart(parts)
            report.add("forwarded")
            if parts[0] == DATA:
                live = msgpack.unpackb(parts[1])[1]
            if mode == "rehead" and parts[0] == ANNOUNCEMENT and recorded is None:
                recorded = (parts, time.monotonic() + 2.0)
        if recorded is not None and not report.counts["done"] and time.monotonic() >= recorded[1]:
            for i in range(count):
                xpub.send_multipart(_reheaded(recorded[0], i))
            report.add("reheaded", count)
            report.counts["done"] = True
        if held and time.monotonic() - held[0][1] > 0.5:
            xpub.send_multipart(held.pop()[0])
            report.add("late")
        if subscribed is not None and attack_until is None and time.monotonic() - subscribed > 0.5:
            attack_until = time.monotonic() + seconds
            if mode == "oversized":
                xpub.send_multipart([DATA, b"\x00" * count])
                report.add("oversized")
                report.counts["done"] = True
        if attacking:
            if mode == "junk":
                for _ in range(1000):
                    xpub.send_multipart([DATA, b"junk"])
                report.add("junk", 1000)
            elif mode == "bloat":
                # Under the live run's id (learned from its frames) and an epoch nobody announced, or a made-up run.
                seq = report.counts.get("bloat", 0) + 1
                stream_id, epoch = (live, 7_000_000) if live and seq % 2 else (b"\x07" * 16, 1)
                xpub.send_multipart([DATA, msgpack.packb([1, stream_id, epoch, seq, filler])], copy=False)
                report.add("bloat")
        elif attack_until is not None and time.monotonic() >= attack_until and mode in ("junk", "bloat"):
            report.counts["done"] = True
        if mode == "swap-checkpoints":
            report.counts["done"] = True
        report.write()
    report.write(force=True)


def _group_topic(i: int) -> bytes:
    """The ``i``-th distinct well-formed group topic of the stream (tags of up to 16 bits)."""
    bits = bin(i + 1)[3:]  # "", "0", "1", "00", ...: every tag once (i < 131,071)
    return TOPIC + b"G" + bits.encode() + b"."


def subscriptions(endpoint: str, mode: str, report: Report, seconds: float, source: str | None = None) -> None:
    state = _stopper()
    sock = zmq.Context.instance().socket(zmq.XSUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    if source:  # libzmq's "tcp://SOURCE:0;HOST:PORT": connect from another local address
        endpoint = endpoint.replace("tcp://", f"tcp://{source}:0;", 1)
    sock.connect(endpoint)
    time.sleep(0.3)  # connected (a subscription sent earlier would only queue)
    until, i = time.monotonic() + seconds, 0
    while time.monotonic() < until and not state["stop"]:
        for _ in range(1000):
            if mode == "same":
                sock.send(b"\x01" + TOPIC + b"D")
            elif mode == "distinct":
                sock.send(b"\x01" + i.to_bytes(6, "big"))
            else:  # distinct-valid
                sock.send(b"\x01" + _group_topic(i % 131_071))
            i += 1
        report.add("sent", 1000)
        while monitor.poll(0):
            monitor.recv_multipart()
            report.add("disconnected")
        report.write()
    report.counts["done"] = True
    report.write(force=True)
    while not state["stop"]:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    r = sub.add_parser("relay")
    r.add_argument("upstream")
    r.add_argument("downstream")
    r.add_argument("mode", choices=["swap-checkpoints", "rehead", "junk", "oversized", "bloat"])
    s = sub.add_parser("subscriptions")
    s.add_argument("endpoint")
    s.add_argument("mode", choices=["same", "distinct", "distinct-valid"])
    for p in (r, s):
        p.add_argument("--report", type=Path, required=True)
        p.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--count", type=int, default=10_000)
    s.add_argument("--source", help="the local address to connect from (tcp), as a stranger on another host")
    args = parser.parse_args(argv)
    report = Report(args.report)
    if args.role == "relay":
        relay(args.upstream, args.downstream, args.mode, report, args.count, args.seconds)
    else:
        subscriptions(args.endpoint, args.mode, report, args.seconds, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
