"""Nothing taken is lost (docs/PROTOCOL.md §10): a reader that is stopped, killed or behind a hole gets every
record exactly once, from the publisher's journal, in order; real processes, exact counts."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from kit import daemons, ports
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.keys.registry import ReaderRegistry


def _count(site, name) -> int:
    """Records in a reader's incoming spool."""
    path = site.dir / f"in-{name}"
    return IncomingSpool(path).count() if path.exists() else 0


def _stored(site, name) -> int:
    """The last sequence number a reader stored, from its status file (its position)."""
    position = daemons.status(site, name).get("position") or {}
    return position.get("seq", 0)


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
        daemons.wait(lambda: len(daemons.bodies(site, "portal")) == 100, what="first 100", logs=logs)
        daemons.stop(reader)
        daemons.feed(site, 300, start=100)  # published while the reader is away
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 400, what="all published", logs=logs)
        reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        daemons.feed(site, 100, start=400)  # and live again
        daemons.wait(lambda: len(daemons.bodies(site, "portal")) == 500, timeout=60, what="catch-up", logs=logs)
    finally:
        daemons.stop(pub, reader)
    daemons.in_stream_order(site, "portal", [f"job {i}" for i in range(500)])  # each once, in order
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
            daemons.wait(lambda: len(daemons.bodies(site, "portal")) > round_ * 200 + 20, what="some delivered", logs=logs)
            reader.send_signal(signal.SIGKILL)
            reader.wait()
            reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        daemons.wait(lambda: len(daemons.bodies(site, "portal")) >= 1000, timeout=90, what="all 1000", logs=logs)
    finally:
        daemons.stop(pub, reader)
    bodies = daemons.bodies(site, "portal")
    assert sorted(bodies, key=lambda b: int(b.split()[1])) == [f"job {i}" for i in range(1000)], (len(bodies), len(set(bodies)))


def _feeder(site, total: int, rate: float, start: int = 0):
    """A thread dropping ``total`` records into the outgoing spool at about ``rate`` per second."""

    def run():
        began, done = time.monotonic(), 0
        while done < total:
            due = min(total, int((time.monotonic() - began) * rate) + 1)
            if due > done:
                daemons.feed(site, due - done, start=start + done)
                done = due
            time.sleep(0.02)  # the pace of the feed itself, not a wait for an event

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _numbers(bodies) -> list[int]:
    return [int(b.split()[1]) for b in bodies]


@pytest.mark.timeout(600)
def test_ten_kill_9s_of_a_reader_during_a_20000_record_stream_store_each_record_once(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log"]
    pub = _journaled_publisher(site, endpoint, replay)
    reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        feeder = _feeder(site, 20_000, 2000.0)
        for kill in range(10):
            stored = _stored(site, "portal")
            daemons.wait(lambda: _stored(site, "portal") > stored, timeout=30,
                         what=f"progress before kill {kill + 1}", logs=logs)
            reader.send_signal(signal.SIGKILL)
            reader.wait()
            reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        feeder.join()
        daemons.wait(lambda: _stored(site, "portal") >= 20_000, timeout=180, what="all 20,000", logs=logs)
    finally:
        daemons.stop(pub, reader)
    numbers = _numbers(daemons.bodies(site, "portal"))
    assert len(numbers) == 20_000 and sorted(numbers) == list(range(20_000))  # every record, each once


@pytest.mark.timeout(400)
def test_a_reader_stopped_for_60_s_catches_up_in_order(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log"]
    pub = _journaled_publisher(site, endpoint, replay)
    reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        feeder = _feeder(site, 8000, 100.0)  # 80 s of records
        daemons.wait(lambda: _stored(site, "portal") >= 500, what="a start", logs=logs)
        daemons.stop(reader)
        time.sleep(60)  # the outage under test: 6,000 records are published meanwhile
        reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        feeder.join()
        daemons.wait(lambda: _stored(site, "portal") >= 8000, timeout=120, what="catch-up", logs=logs)
    finally:
        daemons.stop(pub, reader)
    daemons.in_stream_order(site, "portal", [f"job {i}" for i in range(8000)])  # each once, in order
    status = daemons.status(site, "portal")
    assert status["unrecoverable"] == 0 and status["repairs"] >= 1


def _waiting(outgoing) -> int:
    """Records still in an outgoing spool (its files, not its lock and state files)."""
    return sum(1 for p in outgoing.rglob("*") if p.is_file() and p.name[0] != ".")


ROUND = 3000  # records fed before each kill: three of the publisher's batches


@pytest.mark.timeout(400)
def test_a_publisher_killed_five_times_mid_batch_publishes_every_record_once(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log", d / "central.log"]
    readers = [daemons.subscriber(site, n, endpoint, replay=replay) for n in ("portal", "central")]
    pub = _journaled_publisher(site, endpoint, replay)
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in ("portal", "central")),
                     what="keys", logs=logs)
        mid_batch = 0
        for kill in range(5):
            before = _count(site, "portal")
            daemons.feed(site, ROUND, start=kill * ROUND)
            # Killed as soon as the round's first records arrive: the publisher is in the middle of its batches
            # (it takes the spool 1,000 items at a time, and removes them when the last one's commit is synced).
            daemons.wait(lambda: _count(site, "portal") > before, timeout=30,
                         what=f"publishing before kill {kill + 1}", logs=logs)
            pub.send_signal(signal.SIGKILL)
            pub.wait()
            mid_batch += 0 < _waiting(d / "outgoing") < ROUND * (kill + 1)
            (d / "publisher.json").unlink(missing_ok=True)
            pub = _journaled_publisher(site, endpoint, replay)
        daemons.wait(lambda: all(len(daemons.bodies(site, n)) >= 5 * ROUND for n in ("portal", "central")),
                     timeout=180, what="every record at both readers", logs=logs)
        daemons.wait(lambda: _waiting(d / "outgoing") == 0, what="the spool empty", logs=logs)
    finally:
        daemons.stop(pub, *readers)
    assert mid_batch >= 1  # at least one kill found part of the spool published and part not
    for name in ("portal", "central"):
        numbers = _numbers(daemons.bodies(site, name))
        assert len(numbers) == 5 * ROUND and sorted(numbers) == list(range(5 * ROUND)), name  # none lost, none twice


def test_records_past_retention_are_reported_as_an_unrecoverable_gap_with_their_range(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log"]
    pub = _journaled_publisher(site, endpoint, replay, journal_max_age=3)
    reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        daemons.feed(site, 10)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 10, what="first 10", logs=logs)
        daemons.stop(reader)
        daemons.feed(site, 100, start=10)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 110, what="published", logs=logs)
        time.sleep(4.5)  # past retention (3 s; the journal expires every 0.75 s)
        (d / "portal.json").unlink()
        reader = daemons.subscriber(site, "portal", endpoint, replay=replay)
        # the newest 10 go out once the reader holds the key: on a busy machine a slower start would let them
        # age past the 3 s retention too, and they would rightly be reported lost
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key again", logs=logs)
        daemons.feed(site, 10, start=110)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 20, timeout=60, what="the newest 10", logs=logs)
        daemons.wait(lambda: daemons.status(site, "portal").get("unrecoverable") == 100, what="the gap reported",
                     logs=logs)
    finally:
        daemons.stop(pub, reader)
    assert sorted(_numbers(daemons.bodies(site, "portal"))) == list(range(10)) + list(range(110, 120))
    log = (d / "portal.log").read_text()
    assert "records 11..110 are in no replay server's journal" in log and "ERROR" in log


@pytest.mark.timeout(300)
def test_in_tree_mode_a_reader_away_across_a_publisher_restart_reads_the_old_run_and_a_revoked_one_nothing(site):
    """Key tree mode (§4.6): the publisher journals each update's root, sealed; a reader that comes back after its
    publisher was killed and restarted asks the new run's replay server for the old run's roots, and stores every
    record once.  A reader revoked while it was away gets no roots (§10.1: in tree mode the roots are for readers
    of the registry only), so nothing more: what it missed is refused [no-key] and counted, not stored."""
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = [d / "publisher.log", d / "portal.log", d / "central.log"]
    tree = {"rotation_mode": "tree", "max_messages": 50}  # epochs of 50 records: K frames of several roots
    pub = _journaled_publisher(site, endpoint, replay, **tree)
    readers = [daemons.subscriber(site, n, endpoint, replay=replay) for n in ("portal", "central")]
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") for n in ("portal", "central")), what="keys",
                     logs=logs)
        daemons.feed(site, 100)
        daemons.wait(lambda: all(len(daemons.bodies(site, n)) == 100 for n in ("portal", "central")),
                     what="the first 100 at both", logs=logs)
        daemons.stop(*readers)  # both away from here on
        daemons.feed(site, 100, start=100)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 200, what="200 published", logs=logs)
        ReaderRegistry(site.registry_dir).remove(site.dn("central"))  # revoked while away: a tree update
        daemons.wait(lambda: daemons.status(site, "publisher").get("readers") == 3, what="the revocation", logs=logs)
        daemons.feed(site, 100, start=200)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 300, what="300 published", logs=logs)
        pub.send_signal(signal.SIGKILL)  # the run ends while its readers are away
        pub.wait()
        (d / "publisher.json").unlink(missing_ok=True)
        pub = _journaled_publisher(site, endpoint, replay, **tree)
        readers = [daemons.subscriber(site, n, endpoint, replay=replay) for n in ("portal", "central")]
        daemons.feed(site, 100, start=300)  # the new run, live
        daemons.wait(lambda: len(daemons.bodies(site, "portal")) == 400, timeout=90, what="portal: all 400",
                     logs=logs)
        # central asks for run 1's roots, is refused, and what it replays of run 1 stays unreadable: counted
        daemons.wait(lambda: daemons.status(site, "central")["rejected"].get("no-key", 0) >= 200,
                     what="central: run 1's records from 101 on refused", logs=logs)
    finally:
        daemons.stop(pub, *readers)
    portal = _numbers(daemons.bodies(site, "portal"))
    assert len(portal) == 400 and sorted(portal) == list(range(400))  # every record once
    status = daemons.status(site, "portal")
    assert status["unrecoverable"] == 0 and status["gaps"] == 0 and status["roots"] >= 1
    assert sorted(_numbers(daemons.bodies(site, "central"))) == list(range(100))  # nothing after it went away
    assert "not-a-reader" in (d / "central.log").read_text()
