"""Operating a stream across processes: configured by INI file, revocation through the CA's CRL,
a lossy path with garbage on it, a publisher restart, and an outgoing spool that keeps what failed."""

from __future__ import annotations

import subprocess
import sys
import threading

import msgpack
import zmq

from kit import daemons
from zmqsec.drivers.spool import OutgoingSpool
from zmqsec.keys.registry import ReaderRegistry


def _publisher_ini(site, endpoint, spool_kind="directory") -> str:
    d, c = site.dir, site.certs["publisher"]
    ini = d / "publisher.ini"
    ini.write_text(f"""# as an operator would write it
[stream]
name = apel.jobs

[certificates]
certificate = {c.cert_path}
key = {c.key_path}
capath = {site.trust_dir}

[publisher]
endpoint = {endpoint}

[readers]
registry = {site.registry_dir}

[messaging]
path = {d / 'outgoing'}
spool = {spool_kind}
poll_interval = 0.05

[status]
status_file = {d / 'publisher.json'}
status_interval = 0.2
""")
    return ini


def test_crl_revocation_reaches_the_live_publisher(site, run_cli):
    d = site.dir
    endpoint = daemons.endpoint("tcp", d)
    logs = daemons.logs(site, "publisher", "portal", "central")
    publisher = daemons.cli("--log-level", "INFO", "publish", "--config", _publisher_ini(site, endpoint), log=d / "publisher.log")
    subs = [daemons.subscriber(site, n, endpoint) for n in ("portal", "central")]
    outgoing = OutgoingSpool(d / "outgoing", "directory")
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in ("portal", "central")), what="key", logs=logs)
        for i in range(50):
            outgoing.add(b"before %d" % i)
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 50 for n in ("portal", "central")), what="phase 1", logs=logs)
        assert not any(p.name[0] != "." for p in (d / "outgoing").iterdir())  # plain-directory spool emptied
        # The CA revokes central; the publisher sees the new CRL in its trust directory and rekeys.
        result = subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "revoke", "--ca", site.ca.directory,
                                 site.certs["central"].cert_path], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        daemons.wait(lambda: daemons.status(site, "publisher").get("epoch") == 2, what="rekey after CRL", logs=logs)
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 2, what="portal to switch", logs=logs)
        for i in range(50):
            outgoing.add(b"after %d" % i)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 100, what="phase 2", logs=logs)
        daemons.wait(lambda: daemons.status(site, "central").get("rejected", {}).get("no-key", 0) == 50, what="central dark", logs=logs)
        code, out, err = run_cli("status", d / "publisher.json")
        assert code == 0 and "readers: 3" in out and "last_rekey_cause: readers-changed" in out, out + err
    finally:
        daemons.stop(publisher, *subs)
    assert len(daemons.incoming(site, "central")) == 50
    assert ReaderRegistry(d / "readers.d").load().readers  # the registry itself was not edited


def _lossy_relay(upstream: str, downstream_port_holder: list, drop: set, stop: threading.Event, garbage: list):
    """Forward frames, dropping the data frames whose seq is in ``drop`` and injecting ``garbage`` first."""
    ctx = zmq.Context.instance()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(upstream)
    downstream_port_holder.append(pub.bind_to_random_port("tcp://127.0.0.1"))
    injected = False
    while not stop.is_set():
        if pub.poll(0):
            pub.recv()
            if not injected:
                for parts in garbage:
                    pub.send_multipart(parts)
                injected = True
        if not sub.poll(50):
            continue
        parts = sub.recv_multipart()
        if parts[0].endswith(b"\x00D") and msgpack.unpackb(parts[1])[3] in drop:
            continue
        pub.send_multipart(parts)
    sub.close()
    pub.close()


def test_loss_garbage_and_restart_through_a_relay(site):
    d = site.dir
    endpoint = daemons.endpoint("tcp", d)
    logs = daemons.logs(site, "publisher", "portal")
    garbage = [[b"apel.jobs\x00D", b"\xc1\xc1"], [b"apel.jobs\x00K", msgpack.packb([1, b"x" * 16, 1, b"junk", b"junk"])],
               [b"apel.jobs\x00Dx", b"?"], [b"apel.jobs\x00D"]]  # (an unknown kind would not pass the subscriptions)
    port, stop = [], threading.Event()
    relay = threading.Thread(target=_lossy_relay, args=(endpoint, port, {5, 6}, stop, garbage), daemon=True)
    relay.start()
    daemons.wait(lambda: port, what="relay")
    publisher = daemons.cli("--log-level", "INFO", "publish", "--config", _publisher_ini(site, endpoint, "dirq"), log=d / "publisher.log")
    sub = daemons.subscriber(site, "portal", f"tcp://127.0.0.1:{port[0]}")
    outgoing = OutgoingSpool(d / "outgoing")
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key through the relay", logs=logs)
        for i in range(20):
            outgoing.add(b"run one %d" % i)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 18, what="delivery with two lost", logs=logs)
        daemons.wait(lambda: daemons.status(site, "portal").get("gaps") == 2, what="the gap to be counted", logs=logs)
        rejected = daemons.status(site, "portal")["rejected"]
        assert set(rejected) == {"bad-msgpack", "bad-topic", "bad-parts", "announcement-malformed-cms"}, rejected
        # Restart the publisher: a new stream id; the reader notices and carries on.
        daemons.stop(publisher)
        publisher = daemons.cli("--log-level", "INFO", "publish", "--config", d / "publisher.ini", log=d / "publisher.log")
        daemons.wait(lambda: daemons.status(site, "portal").get("restarts") == 1, what="restart noticed", logs=logs)
        for i in range(20):
            outgoing.add(b"run two %d" % i)
        # seqs 5 and 6 of the new run are dropped by the relay too
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 36, what="delivery after restart", logs=logs)
    finally:
        daemons.stop(publisher, sub)
        stop.set()
        relay.join(5)
    bodies = [m["body"] for m in daemons.incoming(site, "portal")]
    assert sorted(bodies) == sorted([f"run one {i}" for i in range(20) if i not in (4, 5)]
                                    + [f"run two {i}" for i in range(20) if i not in (4, 5)])
    daemons.wait(lambda: daemons.status(site, "portal").get("gaps") == 4, what="gaps of both runs", timeout=5)


def test_outgoing_spool_item_stays_when_publishing_fails(tmp_path):
    spool = OutgoingSpool(tmp_path / "out")
    spool.add(b"keep me")
    spool.add(b"and me")
    (first, _), (second, _) = spool.take()
    assert spool.take() == []  # both locked while in hand
    spool.done(first)
    spool.release(second)  # the publisher failed on this one
    assert [d for _, d in spool.take()] == [b"and me"]


def test_a_slow_registry_load_never_holds_up_publishing(site, monkeypatch):
    """The registry is watched and loaded on a thread of its own: while a load takes as long as it likes (a
    cold validation, a registry of 100,000 files on a busy disk), the publisher goes on publishing; the new
    reader set takes effect at its next turn after the load."""
    import time

    from zmqsec import Publisher
    from zmqsec.drivers import watch

    publisher = Publisher("apel.jobs", [f"ipc://{site.dir}/slow.ipc"], site["publisher"], site.registry,
                          trust_dir=site.trust_dir)
    loading, release = threading.Event(), threading.Event()
    real = watch.RegistryWatch.load

    def slow(self):
        loading.set()
        release.wait(30)
        return real(self)

    monkeypatch.setattr(watch.RegistryWatch, "load", slow)
    try:
        epoch, latecomer = publisher.sender.epoch, site.certs["latecomer"].certificate
        ReaderRegistry(site.registry_dir).remove(site.dn("latecomer"))
        assert loading.wait(10)  # the thread saw the change and is in the load, which waits for us
        for i in range(500):
            publisher.publish(b"record %03d" % i)
        publisher.run_idle(0.2)
        assert publisher.stats.sent == 500 and publisher.sender.epoch == epoch  # published meanwhile, same key
        release.set()
        deadline = time.monotonic() + 10
        while publisher.sender.epoch == epoch and time.monotonic() < deadline:
            publisher.run_idle(0.05)
        assert publisher.sender.epoch == epoch + 1
        assert latecomer not in {r.certificate for r in publisher.sender.readers}
    finally:
        release.set()
        publisher.close()
