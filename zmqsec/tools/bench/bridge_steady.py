"""The bridge section, a steady input: stomp-out taking STEADY_RATE messages/s as a running bridge takes a stream,
with its outbox watched (does it keep up, or does a backlog grow?)."""

from __future__ import annotations

import time
import uuid

from zmqsec.bridges.outbox import Outbox
from zmqsec.bridges.workers import default_workers

from .bridge import BridgeBench
from .config import BenchError
from .stats import median

STEADY_RATE = 400  # messages/s of the steady input stomp-out must keep up with (the bridge issue's figure)


def steady(bench: BridgeBench, body: bytes, encrypt: bool, rate: float, seconds: float) -> dict:
    """A steady input of ``rate`` messages/s for ``seconds``, taken as ``zmqsec bridge stomp-out``'s loop
    takes a stream (what arrived in each 50 ms, then a window to the broker), with the outbox sampled at every
    turn before its send: a bridge that keeps up holds about one turn's input, one that does not holds more and
    more.  Returns the ``bridge_steady`` row."""
    outbox = Outbox(bench.workdir / f"outbox-steady-{uuid.uuid4().hex[:8]}")
    link, bridge = bench._bridge(encrypt, outbox, default_workers())
    backlog = []
    try:
        link.connect()
        fed, t0 = 0, time.monotonic()
        while (now := time.monotonic()) < t0 + seconds:
            due = min(int((now - t0) * rate), int(seconds * rate)) - fed
            if due:
                bridge.step([bench._delivered(body) for _ in range(due)], now)
                fed += due
            backlog.append(outbox.count())  # what waits for the broker at this turn
            bridge.send_pending(time.monotonic())
            time.sleep(max(0.0, 0.05 - (time.monotonic() - now)))
        end = outbox.count()
        t1 = time.monotonic()
        while outbox.count() and time.monotonic() < t1 + 60:
            bridge.send_pending(time.monotonic())
        drain = time.monotonic() - t1
        if outbox.count():
            raise BenchError(f"steady input: {outbox.count()} message(s) still in the outbox 60 s after it ended")
    finally:
        link.close()
        outbox.close()
    bench.sent += fed
    return {"direction": "out", "body_bytes": len(body), "mode": "sign+encrypt" if encrypt else "sign",
            "input_msgs_per_s": rate, "seconds": seconds, "messages": fed, "max_backlog": max(backlog),
            "median_backlog": median(backlog), "backlog_at_end": end, "drain_s": drain,
            "window": bridge.settings.window}
