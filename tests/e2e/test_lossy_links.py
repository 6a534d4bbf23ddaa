"""Nothing lost on lossy links (docs/PROTOCOL.md §10): packet loss on an epgm branch and a tcp link, a reader
whose queue overflows while it is stopped, and an archive relay that serves its subtree; real processes,
exact counts.

Where the loss comes from, path by path:

* epgm branch: nftables, inside the test's own network namespace, drops 5% of the PGM packets and every
  PGM retransmission (PGM would otherwise repair the loss itself and ZeroMQ would see no hole);
* tcp link: nftables drops 5% of the TCP segments, which TCP retransmits (late, never lost); the holes are
  made by a forwarder on the link that discards 5% of the ZeroMQ messages whole (kit/lossy_driver.py);
* a stopped reader: the queue of its upstream (a forwarder with a small high-water mark, because neither
  ``zmqsec subscribe``, ``publish`` nor ``relay`` has an option to lower theirs) overflows.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from kit import daemons, netns, ports
from kit.lossy_driver import forwarder, forwarder_report
from zmqsec.drivers.journal import JournalReader

STREAM = daemons.STREAM.encode()
NFT = shutil.which("nft") is not None


def _position(site, name) -> int:
    """The last sequence number a reader stored (its position), from its status file."""
    return (daemons.status(site, name).get("position") or {}).get("seq", 0)


def _run(site, name) -> str:
    """The run (stream id, hex) a reader follows."""
    return daemons.status(site, name)["position"]["run"]


def _assert_stored_once_in_order(site, name, total: int, template: bytes = b"job %d") -> None:
    """Every record 0 .. total-1 in the reader's incoming queue, each once, in the stream's order, under the run
    the reader follows."""
    daemons.in_stream_order(site, name, [(template % i).decode() for i in range(total)])
    run = _run(site, name)
    assert {m["empaid"].rpartition("-")[0] for m in daemons.incoming(site, name)} == {run}, name


def _archive_frames(directory, run: bytes, last: int) -> tuple[list, list]:
    """(data frames, checkpoints) a journal holds of ``run`` up to ``last``: (seq, topic, body) and
    (first, last, topic, body)."""
    reader = JournalReader(directory)
    try:
        data = [(seq, bytes(topic), bytes(body)) for seq, _, topic, body in reader.data(run, 1, last, last + 1)]
        checkpoints = [(first, end, bytes(topic), bytes(body)) for first, end, topic, body in
                       reader.checkpoints(run, 1, last)]
        return data, checkpoints
    finally:
        reader.close()


@pytest.mark.skipif(not netns.AVAILABLE or not NFT, reason=f"{netns.WHY_NOT}; nft (nftables) injects the loss")
@pytest.mark.timeout(180)
def test_five_percent_loss_on_an_epgm_branch_and_a_tcp_link_is_repaired_exactly_once(site):
    """Publisher -> archive relay -> epgm branch -> portal, and publisher -> lossy tcp link -> central; both
    list the archive's replay first, the publisher's second.  50 records, 600 under 5% loss, 50 after."""
    site.save()
    result = netns.run_driver("lossy_driver.py", "links", site.dir, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # The loss was real on both paths: packets on the branch and the link, whole messages on the link.
    assert outcome["nft"]["pgm"] > 0 and outcome["nft"]["tcp"] > 0, outcome
    assert outcome["forwarder"].get("data", 0) > 0, outcome
    for name in ("portal", "central"):
        _assert_stored_once_in_order(site, name, outcome["total"])
        status = daemons.status(site, name)
        assert status["stored"] == outcome["total"], (name, status)
        assert status["repairs"] > 0 and status["repaired"] > 0, (name, status)  # holes were seen and filled
        assert status["unrecoverable"] == 0 and status["gaps"] == 0, (name, status)


BIG = b"job %d " + b"x" * 1000  # 1 KiB records: the kernel's socket buffers hold few of them


def _overflow_a_stopped_reader(site, live_after: int, timeout: float) -> int:
    """Publisher -> archive relay -> a queue of 200 messages -> reader portal (replay: the archive, then the
    publisher).  100 records; SIGSTOP; 2000 records, until the queue to the stopped reader overflows; SIGCONT;
    ``live_after`` records more.  Waits ``timeout`` s for the reader to store everything; returns the number of
    data frames that overflowed."""
    d = site.dir
    source, relayed, hop = ports.tcp_endpoint(), ports.tcp_endpoint(), ports.tcp_endpoint()
    publisher_replay, archive_replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "archive", "narrow", "portal")
    total = 2100 + live_after
    procs = [daemons.publisher(site, source, journal=d / "publisher-journal", replay_endpoint=publisher_replay),
             daemons.relay(site, "archive", source, relayed, journal=d / "archive-journal",
                           replay_endpoint=archive_replay),
             # The reader's upstream queue: 200 messages and a 64 KiB socket buffer.  It stands in for the
             # high-water mark of the relay or publisher the reader connects to (100,000 messages), which no
             # zmqsec option lowers; a stopped reader's own receive queue never fills, its I/O thread is stopped.
             forwarder(d, "narrow", relayed, hop, hwm=200, sndbuf=65536)]
    reader = daemons.subscriber(site, "portal", hop, replay=[archive_replay, publisher_replay])
    procs.append(reader)

    def reached_the_queue() -> int:
        report = forwarder_report(d, "narrow")
        return report["forwarded"].get("data", 0) + report["overflowed"].get("data", 0)

    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        daemons.feed(site, 100, BIG)
        daemons.wait(lambda: _position(site, "portal") == 100, what="first 100", logs=logs)
        reader.send_signal(signal.SIGSTOP)
        daemons.feed(site, 2000, BIG, start=100)
        daemons.wait(lambda: reached_the_queue() == 2100, timeout=30, what="every record to reach the queue", logs=logs)
        overflowed = forwarder_report(d, "narrow")["overflowed"].get("data", 0)
        assert overflowed > 0  # the queue did overflow: those records can reach the reader by replay only
        reader.send_signal(signal.SIGCONT)
        daemons.feed(site, live_after, BIG, start=2100)
        daemons.wait(lambda: _position(site, "portal") == total, timeout=timeout, what=f"all {total} after SIGCONT",
                     logs=logs)
    finally:
        reader.send_signal(signal.SIGCONT)  # a stopped process leaves SIGTERM pending until it runs again
        daemons.stop(*procs)
    _assert_stored_once_in_order(site, "portal", total, BIG)
    status = daemons.status(site, "portal")
    assert status["repaired"] >= overflowed, (overflowed, status)
    assert status["unrecoverable"] == 0 and status["gaps"] == 0, status
    return overflowed


@pytest.mark.timeout(120)
def test_a_reader_stopped_until_its_queue_overflows_gets_every_record_once_in_order(site):
    """SIGSTOP a reader, publish until the queue to it overflows, SIGCONT, and the stream goes on: the overflow
    is repaired from the archive relay (or the publisher), every record stored once, in order."""
    _overflow_a_stopped_reader(site, live_after=100, timeout=60)


@pytest.mark.timeout(120)
def test_a_reader_whose_queue_overflowed_at_the_end_of_a_burst_gets_the_tail_while_the_stream_is_idle(site):
    """As above with no record after SIGCONT: the publisher re-sends its last checkpoint with every
    re-announcement, so the reader learns of the lost tail on an idle stream and repairs it."""
    _overflow_a_stopped_reader(site, live_after=0, timeout=20)


@pytest.mark.timeout(120)
def test_an_archive_relay_serves_a_restarted_reader_behind_it_exactly_once(site):
    """A reader behind an archive relay, naming only the relay's replay, stopped while 300 records pass and
    restarted: it stores all 500 once, in order, and the relay's journal holds every frame the publisher's does."""
    d = site.dir
    source, relayed = ports.tcp_endpoint(), ports.tcp_endpoint()
    publisher_replay, archive_replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "archive", "central")
    pub = daemons.publisher(site, source, journal=d / "publisher-journal", replay_endpoint=publisher_replay)
    archive = daemons.relay(site, "archive", source, relayed, journal=d / "archive-journal",
                            replay_endpoint=archive_replay)
    reader = daemons.subscriber(site, "central", relayed, replay=[archive_replay])  # the relay's replay only
    try:
        daemons.wait(lambda: daemons.status(site, "central").get("epoch") == 1, what="key", logs=logs)
        daemons.feed(site, 100)
        daemons.wait(lambda: _position(site, "central") == 100, what="first 100", logs=logs)
        run = bytes.fromhex(_run(site, "central"))
        daemons.stop(reader)
        daemons.feed(site, 300, start=100)  # passes the relay while the reader is away
        daemons.wait(lambda: _journaled(d / "archive-journal", run) == 400, what="the relay to archive 400",
                     logs=logs)
        reader = daemons.subscriber(site, "central", relayed, replay=[archive_replay])
        daemons.feed(site, 100, start=400)  # and live again
        daemons.wait(lambda: _position(site, "central") == 500, timeout=60, what="catch-up", logs=logs)
    finally:
        daemons.stop(pub, archive, reader)
    _assert_stored_once_in_order(site, "central", 500)
    status = daemons.status(site, "central")
    assert status["repairs"] >= 1 and status["repaired"] >= 300, status  # the 300 came from the relay
    assert status["unrecoverable"] == 0 and status["gaps"] == 0, status
    # The relay's journal holds the whole run: every data frame once, byte for byte the publisher's, and
    # the checkpoints that vouch for them.
    reader = JournalReader(d / "archive-journal")
    info = reader.run(STREAM, run)
    reader.close()
    assert (info.last_seq, info.first_available, info.last_available) == (500, 1, 500)
    data, checkpoints = _archive_frames(d / "archive-journal", run, 500)
    assert [seq for seq, _, _ in data] == list(range(1, 501))
    assert (data, checkpoints) == _archive_frames(d / "publisher-journal", run, 500)
    assert {seq for first, last, _, _ in checkpoints for seq in range(first, last + 1)} == set(range(1, 501))


def _journaled(directory, run: bytes) -> int:
    """The last data frame of ``run`` committed to the journal in ``directory`` (0: none yet)."""
    reader = JournalReader(directory)
    try:
        info = reader.run(STREAM, run)
        return info.last_seq if info else 0
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_a_reader_that_loses_the_first_checkpoint_of_a_run_stores_the_run_from_its_first_record(site):
    d = site.dir
    source, link, replay = ports.tcp_endpoint(), ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "link", "central")
    procs = [daemons.publisher(site, source, journal=d / "publisher-journal", replay_endpoint=replay),
             forwarder(d, "link", source, link)]
    procs.append(daemons.subscriber(site, "central", link, replay=[replay]))
    try:
        daemons.wait(lambda: daemons.status(site, "central").get("epoch") == 1, what="key", logs=logs)
        daemons.wait(lambda: forwarder_report(d, "link"), what="the forwarder's first report", logs=logs)
        procs[1].send_signal(signal.SIGUSR2)  # the link loses the next checkpoint: the run's first
        daemons.wait(lambda: forwarder_report(d, "link").get("lose_checkpoint"), what="the loss armed", logs=logs)
        daemons.feed(site, 100)
        daemons.wait(lambda: forwarder_report(d, "link")["dropped"].get("checkpoint") == 1, what="the loss", logs=logs)
        daemons.feed(site, 100, start=100)
        daemons.wait(lambda: _position(site, "central") == 200, timeout=30, what="the reader at 200", logs=logs)
    finally:
        daemons.stop(*procs)
    status = daemons.status(site, "central")
    daemons.in_stream_order(site, "central", [f"job {i}" for i in range(200)])
    assert status["gaps"] == 0 and status["unrecoverable"] == 0 and status["repaired"] >= 1, status
