"""Nothing taken is lost (docs/PROTOCOL.md §10): a reader that is stopped, killed or behind a hole gets every
record exactly once, from the publisher's journal, in order; real processes, exact counts."""

from __future__ import annotations

import signal

from kit import daemons, ports


def _bodies(site, name) -> list[str]:
    return [m["body"] for m in daemons.incoming(site, name)]


def _journaled_publisher(site, endpoint, replay, **options):
    return daemons.publisher(site, endpoint, journal=site.dir / "journal", replay_endpoint=replay, **options)


def test_a_reader_stopped_mid_stream_catches_up_exactly_once_in_order(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log"]
    pub = _journaled_publisher(site, endpoint, replay)
    reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        daemons.feed(site, 100)
        daemons.wait(lambda: len(_bodies(site, "portal")) == 100, what="first 100", logs=logs)
        daemons.stop(reader)
        daemons.feed(site, 300, start=100)  # published while the reader is away
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 400, what="all published", logs=logs)
        reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        daemons.feed(site, 100, start=400)  # and live again
        daemons.wait(lambda: len(_bodies(site, "portal")) == 500, timeout=60, what="catch-up", logs=logs)
    finally:
        daemons.stop(pub, reader)
    assert _bodies(site, "portal") == [f"job {i}" for i in range(500)]  # each once, in order
    status = daemons.status(site, "portal")
    assert status["gaps"] == 0 and status["unrecoverable"] == 0 and status["repairs"] >= 1


def test_a_reader_killed_again_and_again_stores_every_record_once(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log"]
    pub = _journaled_publisher(site, endpoint, replay)
    reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        for round_ in range(5):
            daemons.feed(site, 200, start=round_ * 200)
            daemons.wait(lambda: len(_bodies(site, "portal")) > round_ * 200 + 20, what="some delivered", logs=logs)
            reader.send_signal(signal.SIGKILL)
            reader.wait()
            reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        daemons.wait(lambda: len(_bodies(site, "portal")) >= 1000, timeout=90, what="all 1000", logs=logs)
    finally:
        daemons.stop(pub, reader)
    bodies = _bodies(site, "portal")
    assert sorted(bodies, key=lambda b: int(b.split()[1])) == [f"job {i}" for i in range(1000)], (len(bodies), len(set(bodies)))
