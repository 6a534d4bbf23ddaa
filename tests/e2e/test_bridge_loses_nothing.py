"""Nothing lost through the STOMP bridge (docs/PROTOCOL.md §10, README "Nothing lost"): ``stomp-out`` is a reader
with a position beside its outbox, so what is published while it is stopped or killed reaches the real ActiveMQ
when it returns, under the same ``empa-id`` on every retry; ``stomp-in`` stores it.  Real processes, the broker
``./run test`` started, exact counts."""

from __future__ import annotations

import datetime as dt
import queue
import re
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter

import pytest
import stomp

from kit import daemons, ports, stomp_client
from kit.pki import Pki
from kit.receipt_thief import ReceiptThief
from kit.ports import HOST, free_port
from zmqsec.bridges import smime
from zmqsec.keys.ca import Role

pytestmark = pytest.mark.broker

ELEMENT = re.compile(r"^[0-9a-f]{8}/[0-9a-f]{14}$")  # dirq: <directory>/<element>; not temporary/, obsolete/


@pytest.fixture
def site(tmp_path) -> Pki:
    """A publisher, the bridge (the one registered reader; it signs what goes to the broker) and the accounting
    server (stomp-in's certificate, which the bridge encrypts to)."""
    site = Pki.create(tmp_path, "/O=zmqsec test/CN=Bridge Site CA", publisher=Role.PUBLISHER, bridge=Role.BRIDGE,
                      server=Role.SERVER)
    return site.register("bridge")


@pytest.fixture
def destination() -> str:
    """A queue of the test's own on the shared broker."""
    return f"/queue/zmqsec.test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def port(broker) -> int:
    """The plain STOMP port of the broker ``./run test`` started."""
    return broker["stomp_ports"][0]


class Stream:
    """A journaled publisher with a replay endpoint, and the stomp-out bridge that reads it with ``--replay``."""

    def __init__(self, site: Pki, destination: str, port: int) -> None:
        self.site, self.destination, self.hosts = site, destination, f"{HOST}:{port}"
        self.endpoint, self.replay = ports.tcp_endpoint(), ports.tcp_endpoint()
        self.publisher = self.bridge = None

    def start_publisher(self):
        """Start (or restart: a new run, the same journal and endpoints) the publisher."""
        (self.site.dir / "publisher.json").unlink(missing_ok=True)  # a predecessor's figures are not this one's
        self.publisher = daemons.publisher(self.site, self.endpoint, journal=self.site.dir / "journal",
                                           replay_endpoint=self.replay)
        return self.publisher

    def start_bridge(self, hosts: str | None = None, **options):
        """Start stomp-out on the outbox ``outbox-bridge`` (its position in ``outbox-bridge.state.json``), sending
        to ``hosts`` (default: the test broker)."""
        self.bridge = daemons.bridge_out(self.site, "bridge", self.endpoint, reader="bridge", replay=self.replay,
                                         hosts=hosts or self.hosts, destination=self.destination, heartbeat=2000,
                                         **options)
        return self.bridge

    def kill_bridge(self) -> None:
        """kill -9: no clean-up, no last status, no last position save."""
        self.bridge.send_signal(signal.SIGKILL)
        self.bridge.wait()

    def status(self, name: str, proc) -> dict:
        """The status of the running process ``proc`` (a dead predecessor's file says nothing about it)."""
        doc = daemons.status(self.site, name)
        return doc if proc is not None and doc.get("pid") == proc.pid else {}

    def published(self) -> int:
        """Records the running publisher has sent in its run."""
        return self.status("publisher", self.publisher).get("sent", 0)

    def bridge_ready(self) -> bool:
        """The bridge holds the stream's key and is connected to the broker."""
        doc = self.status("bridge", self.bridge)
        return doc.get("epoch", 0) >= 1 and doc.get("broker") is not None

    def outbox_empty(self) -> bool:
        """The running bridge has every message it took receipted."""
        return self.status("bridge", self.bridge).get("outbox") == 0

    def outbox_ids(self) -> set[str]:
        """The empa-ids in the bridge's outbox, read from its database (read-only; WAL lets us beside the bridge)."""
        db = sqlite3.connect(f"file:{self.site.dir / 'outbox-bridge' / 'outbox.sqlite'}?mode=ro", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT empaid FROM outbox")}
        finally:
            db.close()

    def logs(self) -> list:
        """The daemons' logs, for a timed-out wait to show."""
        return daemons.logs(self.site, "publisher", "bridge", "bridge-in")

    def stop(self) -> None:
        """Stop the publisher and the bridge (SIGTERM)."""
        daemons.stop(*(p for p in (self.publisher, self.bridge) if p is not None))


class Feeder(threading.Thread):
    """Drops records ``job 0``, ``job 1``, ... into the outgoing spool at ``rate`` per second until :meth:`finish`,
    which returns exactly how many it fed (the outages take as long as the machine needs; the count is exact)."""

    def __init__(self, site, rate: float) -> None:
        super().__init__(daemon=True)
        self.site, self.rate, self.done = site, rate, 0
        self._finish = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        while not self._finish.is_set():
            due = int((time.monotonic() - began) * self.rate) + 1
            if due > self.done:
                daemons.feed(self.site, due - self.done, start=self.done)
                self.done = due
            self._finish.wait(0.02)  # the pace of the feed itself, not a wait for an event

    def finish(self) -> int:
        """Stop feeding; the number of records fed."""
        self._finish.set()
        self.join()
        return self.done


def _stored_ids(site, name: str) -> list[str]:
    """The empaid of every element of a stomp-in incoming queue, straight from dirq's files (locking each
    element, as a consumer must, would make polling slow)."""
    root = site.dir / f"in-{name}"
    if not root.exists():
        return []
    return [(p.parent / "empaid").read_text() for p in root.glob("*/*/body")
            if ELEMENT.match(p.parent.relative_to(root).as_posix()) and (p.parent / "empaid").exists()]


class Consumer:
    """A plain STOMP subscriber of the test's queue (kit.stomp_client's Inbox): every raw delivery, in order."""

    def __init__(self, port: int, destination: str) -> None:
        self.inbox = stomp_client.Inbox()
        self.conn = stomp.Connection([(stomp_client.HOST, port)], auto_decode=False)
        self.conn.set_listener("raw", self.inbox)
        self.conn.connect(wait=True)
        self.conn.subscribe(destination, id="raw", ack="auto")
        self.got: list[tuple[dict, bytes]] = []

    def poll(self) -> list[tuple[dict, bytes]]:
        """Everything delivered so far."""
        while True:
            try:
                self.got.append(self.inbox.messages.get_nowait())
            except queue.Empty:
                return self.got

    def next(self, timeout: float) -> tuple[dict, bytes] | None:
        """Wait for one more delivery (None after ``timeout``)."""
        try:
            self.got.append(self.inbox.messages.get(timeout=timeout))
        except queue.Empty:
            return None
        return self.got[-1]

    def distinct(self) -> int:
        """How many different empa-ids were delivered."""
        return len({h["empa-id"] for h, _ in self.poll()})

    def settle(self, quiet: float = 1.0) -> list[tuple[dict, bytes]]:
        """Everything, once nothing more has come for ``quiet`` seconds (a late duplicate would be counted)."""
        self.got += self.inbox.take(0, 0, quiet)
        return self.poll()

    def close(self) -> None:
        """Disconnect."""
        self.conn.disconnect()


def _check_raw(deliveries, records: set[bytes]) -> dict[str, int]:
    """Every record exactly once under one empa-id, any repeat a byte-identical resend under the empa-id of its
    earlier delivery; returns the repeated empa-ids with their delivery counts."""
    first: dict[str, bytes] = {}
    ids_of: dict[bytes, set[str]] = {}
    for headers, body in deliveries:
        empaid = headers["empa-id"]
        if empaid in first:
            assert body == first[empaid], f"{empaid} was sent again with a different body"
            continue
        first[empaid] = body
        ids_of.setdefault(smime.open_message(body).content, set()).add(empaid)
    assert set(ids_of) == records, (f"{len(records - set(ids_of))} record(s) missing, "
                                    f"{len(set(ids_of) - records)} unexpected")
    assert all(len(ids) == 1 for ids in ids_of.values()), \
        {content: ids for content, ids in ids_of.items() if len(ids) > 1}  # a record taken twice, under a new id
    return {e: c for e, c in Counter(h["empa-id"] for h, _ in deliveries).items() if c > 1}


@pytest.mark.timeout(150)
def test_stomp_out_stopped_for_30_s_then_killed_stomp_in_stores_every_record_once(site, destination, port):
    """Records flow at 10/s throughout; stomp-out is stopped (SIGTERM, not running) for 30 s, restarted, later
    killed with kill -9 while records still flow, restarted: stomp-in stores every record fed, each under one
    empaid and exactly once (a message in flight at the kill -9, receipted by the broker and still in the
    outbox, reaches the broker a second time under the same empaid; stomp-in acknowledges that copy only)."""
    d = site.dir
    dn_list = d / "valid_dns"
    dn_list.write_text(site.dn("bridge") + "\n")
    stream = Stream(site, destination, port)
    server_cert = site.certs["server"].cert_path
    stream_in = feeder = None

    def stored() -> int:
        return len(set(_stored_ids(site, "bridge-in")))

    try:
        stream.start_publisher()
        stream_in = daemons.bridge_in(site, "bridge-in", certificate="server", hosts=stream.hosts,
                                      destination=destination, dn_list=dn_list)
        stream.start_bridge(server_cert=server_cert)
        daemons.wait(lambda: stream.bridge_ready() and stream.status("bridge-in", stream_in).get("broker"),
                     what="both bridges connected, stomp-out holding the key", logs=stream.logs())
        feeder = Feeder(site, 10.0)
        feeder.start()
        daemons.wait(lambda: stored() >= 50, what="a start", logs=stream.logs())

        # 1. Stopped: the process is gone, its position saved beside its outbox.
        daemons.stop(stream.bridge)
        assert stream.bridge.poll() is not None and (d / "outbox-bridge.state.json").exists()
        stopped_at = stream.published()
        time.sleep(30)  # the outage under test: about 300 records are published meanwhile
        restarted_at = stream.published()
        assert restarted_at - stopped_at >= 250, restarted_at - stopped_at
        stream.start_bridge(server_cert=server_cert)
        daemons.wait(lambda: stored() >= restarted_at, timeout=60,
                     what=f"the {restarted_at - stopped_at} records published during the outage", logs=stream.logs())
        daemons.wait(lambda: stream.status("bridge", stream.bridge).get("repaired", 0) >= restarted_at - stopped_at,
                     what="the outage's records counted as fetched from the journal", logs=stream.logs())

        # 2. kill -9 while records flow live; the dead bridge's outbox is frozen as it left it.
        live = stored()
        daemons.wait(lambda: stored() >= live + 10, what="live records again", logs=stream.logs())
        stream.kill_bridge()
        killed_at = stream.published()
        daemons.wait(lambda: stream.published() >= killed_at + 10, what="records published while it is dead",
                     logs=stream.logs())
        stream.start_bridge(server_cert=server_cert)
        back_at = stream.published()
        daemons.wait(lambda: stored() >= back_at + 10, timeout=60, what="live records after the kill -9",
                     logs=stream.logs())
        total = feeder.finish()
        daemons.wait(lambda: stream.published() == total, what=f"all {total} published", logs=stream.logs())
        daemons.wait(lambda: stored() == total and stream.outbox_empty(), timeout=60,
                     what=f"all {total} stored by stomp-in", logs=stream.logs())
        bridge_status = stream.status("bridge", stream.bridge)
    finally:
        if feeder is not None:
            feeder.finish()
        stream.stop()
        if stream_in is not None:
            daemons.stop(stream_in)
    # Nothing is left on the queue for stomp-in: 1 s in which nothing may come.
    assert stomp_client.drain(port, destination, 0, timeout=0, quiet=1.0) == []
    assert daemons.status(site, "bridge-in")["rejected"] == {}
    assert bridge_status["unrecoverable"] == 0 and bridge_status["gaps"] == 0

    messages = daemons.incoming(site, "bridge-in")
    counts = Counter(m["empaid"] for m in messages)
    runs = {e.rpartition("-")[0] for e in counts}
    assert len(runs) == 1 and {int(e.rpartition("-")[2]) for e in counts} == set(range(1, total + 1))
    body_of: dict[str, str] = {}
    for m in messages:
        assert body_of.setdefault(m["empaid"], m["body"]) == m["body"], m["empaid"]  # a repeat is the same record
    assert sorted(body_of.values()) == sorted(f"job {i}" for i in range(total))  # each record under one empaid
    assert {m["signer"] for m in messages} == {site.dn("bridge")}
    # A message in flight at the kill -9 may reach the broker twice; stomp-in stores it once.
    assert {e: c for e, c in counts.items() if c > 1} == {} and len(messages) == total


def test_a_kill_9_between_receipt_and_outbox_removal_resends_under_the_same_empa_id(site, destination, port):
    """The broker commits a window stomp-out sent, and stomp-out is killed before it learns so (its receipt is
    withheld on the way, so that the kill lands in that moment every time): the broker holds messages the outbox
    still holds.  After the restart each duplicate at the broker carries the empa-id of its earlier delivery,
    byte for byte, and no record is missing (those published while it was dead come from the journal)."""
    stream = Stream(site, destination, port)
    consumer = Consumer(port, destination)
    thief = ReceiptThief(port)
    try:
        stream.start_publisher()
        # No broker yet (nothing listens there): the outbox fills while the stream is read.
        stream.start_bridge(hosts=f"{HOST}:{free_port()}")
        daemons.wait(lambda: stream.status("bridge", stream.bridge).get("epoch") == 1, what="key", logs=stream.logs())
        daemons.feed(site, 300)
        daemons.wait(lambda: stream.status("bridge", stream.bridge).get("outbox") == 300, what="300 in the outbox",
                     logs=stream.logs())
        daemons.stop(stream.bridge)
        # Now the broker, through the thief: the first window is committed and delivered, its receipt never
        # comes back, and the bridge is killed while it waits for it.
        stream.start_bridge(hosts=f"{HOST}:{thief.port}")
        if consumer.next(timeout=30) is None:
            pytest.fail("nothing reached the broker\n" + "".join(p.read_text()[-2000:] for p in stream.logs()
                                                                  if p.exists()))
        daemons.wait(lambda: thief.stolen >= 1, what="the window's receipt withheld", logs=stream.logs())
        stream.kill_bridge()
        in_flight = stream.outbox_ids()
        daemons.wait(lambda: len(consumer.poll()) >= 100, what="the whole window (100) delivered", logs=stream.logs())
        delivered = {h["empa-id"] for h, _ in consumer.poll()}
        assert len(delivered) == 100 and delivered <= in_flight and len(in_flight) == 300  # the outbox kept it all
        daemons.feed(site, 100, start=300)  # published while the bridge is dead
        daemons.wait(lambda: stream.published() == 400, what="all published", logs=stream.logs())
        stream.start_bridge()
        daemons.wait(lambda: consumer.distinct() == 400 and stream.outbox_empty(), timeout=60,
                     what="all 400 at the broker", logs=stream.logs())
        deliveries = consumer.settle()
        bridge_status = stream.status("bridge", stream.bridge)
    finally:
        thief.close()
        stream.stop()
        consumer.close()
    repeated = _check_raw(deliveries, {b"job %d" % i for i in range(400)})
    assert set(repeated) == delivered and all(c == 2 for c in repeated.values()), repeated  # each sent again once
    assert len(deliveries) == 400 + len(repeated)
    assert bridge_status["unrecoverable"] == 0 and bridge_status["repaired"] > 0


@pytest.mark.parametrize("publisher_restarted", [False, True], ids=["same-run", "publisher-restarted"])
def test_stomp_out_joining_late_with_a_saved_position_fetches_what_it_missed(site, destination, port,
                                                                              publisher_restarted):
    """stomp-out read 50 records, was stopped, and starts again only after 150 more were published (and, in the
    second case, after the publisher itself restarted, a new run, for the last 50), with nothing more coming
    live: from its saved position it fetches the 150 from the journal; the broker gets each of the 200 once."""
    stream = Stream(site, destination, port)
    consumer = Consumer(port, destination)
    try:
        stream.start_publisher()
        stream.start_bridge()
        daemons.wait(stream.bridge_ready, what="bridge connected and holding the key", logs=stream.logs())
        daemons.feed(site, 50)
        daemons.wait(lambda: stream.status("bridge", stream.bridge).get("sent") == 50, what="50 receipts",
                     logs=stream.logs())
        daemons.stop(stream.bridge)
        if publisher_restarted:
            daemons.feed(site, 100, start=50)
            daemons.wait(lambda: stream.published() == 150, what="150 published by the first run", logs=stream.logs())
            daemons.stop(stream.publisher)
            stream.start_publisher()
            daemons.feed(site, 50, start=150)
            daemons.wait(lambda: stream.published() == 50, what="50 published by the second run", logs=stream.logs())
        else:
            daemons.feed(site, 150, start=50)
            daemons.wait(lambda: stream.published() == 200, what="all published", logs=stream.logs())
        stream.start_bridge()
        missed = "100 of the first run and 50 of the second" if publisher_restarted else "150"
        try:
            daemons.wait(lambda: consumer.distinct() == 200 and stream.outbox_empty(), timeout=30,
                         what=f"the records it missed ({missed}) at the broker", logs=stream.logs())
        except AssertionError as exc:
            raise AssertionError(f"{consumer.distinct()} of 200 at the broker; {exc}") from None
        deliveries = consumer.settle()
        bridge_status = stream.status("bridge", stream.bridge)
    finally:
        stream.stop()
        consumer.close()
    assert _check_raw(deliveries, {b"job %d" % i for i in range(200)}) == {}  # stopped cleanly: no resend
    assert len(deliveries) == 200
    runs = {h["empa-id"].rpartition("-")[0] for h, _ in deliveries}
    assert len(runs) == (2 if publisher_restarted else 1)
    assert bridge_status["sent"] == 150 and bridge_status["repaired"] >= 150 and bridge_status["unrecoverable"] == 0


def test_stomp_in_stores_a_re_sent_empa_id_once_also_across_its_restart(site, destination, port):
    """A sender re-sends a message under the empa-id it used before (as stomp-out does after a kill -9): stomp-in
    acknowledges the copy and stores nothing new, while running and after a restart (it remembers the ids still in
    its incoming queue); the same empa-id from another signer is another message."""
    d = site.dir
    site.issue("other", Role.BRIDGE)
    (d / "valid_dns").write_text(f"{site.dn('bridge')}\n{site.dn('other')}\n")
    one, two = smime.sign(b"job 1", site["bridge"]), smime.sign(b"job 2", site["bridge"])
    logs = daemons.logs(site, "bridge-in")
    options = dict(certificate="server", hosts=f"{HOST}:{port}", destination=destination, dn_list=d / "valid_dns")
    stream_in = daemons.bridge_in(site, "bridge-in", **options)
    try:
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("broker"), what="stomp-in connected", logs=logs)
        stomp_client.send(port, destination, [("run-1", one), ("run-1", one), ("run-2", two)])
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("duplicates") == 1, what="the copy", logs=logs)
        daemons.stop(stream_in)
        (d / "bridge-in.json").unlink()  # the predecessor's figures
        stream_in = daemons.bridge_in(site, "bridge-in", **options)
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("broker"), what="stomp-in again", logs=logs)
        stomp_client.send(port, destination, [("run-2", two), ("run-1", smime.sign(b"job 1", site["other"]))])
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("duplicates") == 1
                     and daemons.status(site, "bridge-in").get("accepted") == 1, what="after the restart", logs=logs)
    finally:
        daemons.stop(stream_in)
    stored = sorted((m["signer"], m["empaid"], m["body"]) for m in daemons.incoming(site, "bridge-in"))
    assert stored == sorted([(site.dn("bridge"), "run-1", "job 1"), (site.dn("bridge"), "run-2", "job 2"),
                             (site.dn("other"), "run-1", "job 1")])


def _handled(site) -> dict:
    s = daemons.status(site, "bridge-in")
    return {"accepted": s.get("accepted", 0), **s.get("rejected", {})}


def test_stomp_in_follows_its_dn_list_and_crls_while_it_runs(site, destination, port):
    """#13: a DN removed from the list, a signer revoked by a new CRL, a CRL past its nextUpdate and then
    refreshed: each takes effect within a second, with no restart."""
    d = site.dir
    for name in ("other", "third"):
        site.issue(name, Role.BRIDGE)
    dn_list = d / "valid_dns"
    dn_list.write_text("".join(f"{site.dn(n)}\n" for n in ("bridge", "other", "third")))
    logs = daemons.logs(site, "bridge-in")
    stream_in = daemons.bridge_in(site, "bridge-in", certificate="server", hosts=f"{HOST}:{port}",
                                  destination=destination, dn_list=dn_list)

    def send_and_wait(empaid: str, signer: str, expected: dict) -> None:
        stomp_client.send(port, destination, [(empaid, smime.sign(empaid.encode(), site[signer]))])
        daemons.wait(lambda: _handled(site) == expected, timeout=10, what=f"{empaid}: {expected}", logs=logs)

    try:
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("broker"), what="stomp-in connected", logs=logs)
        send_and_wait("m1", "other", {"accepted": 1})
        dn_list.write_text(f"# other removed\n{site.dn('bridge')}\n{site.dn('third')}\n")
        time.sleep(1.0)
        send_and_wait("m2", "other", {"accepted": 1, "dn-not-allowed": 1})
        site.ca.revoke(site.certs["bridge"].certificate)  # the new CRL goes into the trust directory
        time.sleep(1.0)
        send_and_wait("m3", "bridge", {"accepted": 1, "dn-not-allowed": 1, "revoked": 1})
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
        site.ca.refresh_crl(clock=lambda: past)  # its nextUpdate is long gone: every signer fails
        time.sleep(1.0)
        send_and_wait("m4", "third", {"accepted": 1, "dn-not-allowed": 1, "revoked": 1, "crl-expired": 1})
        site.ca.refresh_crl()  # fetch-crl ran
        time.sleep(1.0)
        send_and_wait("m5", "third", {"accepted": 2, "dn-not-allowed": 1, "revoked": 1, "crl-expired": 1})
        log_text = (d / "bridge-in.log").read_text()
    finally:
        daemons.stop(stream_in)
    assert "due to be replaced" in log_text  # the expired CRL was warned about when it was read
    assert sorted(m["empaid"] for m in daemons.incoming(site, "bridge-in")) == ["m1", "m5"]


def test_stomp_in_does_not_start_without_a_dn_list_unless_told_to_accept_any_signer(site, destination, port):
    d = site.dir
    common = dict(certificate="server", hosts=f"{HOST}:{port}", destination=destination)
    (d / "empty_dns").write_text("# nobody yet\n\n")
    for extra in ({}, {"dn_list": d / "empty_dns"}):
        proc = daemons.bridge_in(site, "bridge-in", **common, **extra)
        assert proc.wait(timeout=30) != 0
    log_text = (d / "bridge-in.log").read_text()
    assert "needs [messaging] dn_list" in log_text and "allows no signer" in log_text
    stream_in = daemons.bridge_in(site, "bridge-in", **common, accept_any_signer="yes")
    try:
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("broker"), what="stomp-in connected",
                     logs=daemons.logs(site, "bridge-in"))
    finally:
        daemons.stop(stream_in)
    assert "accept_any_signer: any signer certificate from the CAs in" in (d / "bridge-in.log").read_text()


def test_stomp_in_killed_again_and_again_under_load_stores_every_message_once(site, destination, port):
    """1,000 messages wait on the broker; stomp-in (which syncs a batch, then acknowledges it) is killed with
    kill -9 three times while it stores them: every message is stored exactly once."""
    d = site.dir
    (d / "valid_dns").write_text(site.dn("bridge") + "\n")
    total = 1000
    stomp_client.send(port, destination, [(f"run-{i}", smime.sign(b"job %d" % i, site["bridge"]))
                                          for i in range(total)])
    logs = daemons.logs(site, "bridge-in")
    options = dict(certificate="server", hosts=f"{HOST}:{port}", destination=destination, dn_list=d / "valid_dns")
    stream_in = None

    def stored() -> int:
        return len(_stored_ids(site, "bridge-in"))

    try:
        for kill_at in (150, 400, 650):
            stream_in = daemons.bridge_in(site, "bridge-in", **options)
            daemons.wait(lambda: stored() >= kill_at, timeout=60, what=f"{kill_at} stored", logs=logs)
            stream_in.send_signal(signal.SIGKILL)
            stream_in.wait(timeout=10)
        stream_in = daemons.bridge_in(site, "bridge-in", **options)
        daemons.wait(lambda: stored() >= total, timeout=90, what=f"all {total} stored", logs=logs)
        time.sleep(1.0)  # nothing more may come
    finally:
        if stream_in is not None:
            daemons.stop(stream_in)
    ids = _stored_ids(site, "bridge-in")
    assert len(ids) == total and set(ids) == {f"run-{i}" for i in range(total)}, Counter(ids).most_common(3)
    assert stomp_client.drain(port, destination, 0, timeout=0, quiet=1.0) == []
