"""Spools lose nothing (issue "Nothing lost", docs/PROTOCOL.md §8): an outgoing item leaves only published or set
aside with its reason; an unreadable, vanished or half-written item blocks nothing and crashes nothing; a reader
whose filesystem fills up, or whose status file cannot be written, keeps every record.  Real processes for the
daemons, real OutgoingSpool objects for the spool; exact counts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dirq.QueueSimple import QueueSimple
from dirq.queue import Queue

from kit import daemons, mounts, ports
from zmqsec.bridges.outbox import Outbox
from zmqsec.drivers.spool import IncomingSpool, OutgoingSpool
from zmqsec.protocol.primitives import MAX_PAYLOAD

OVERSIZED = 17 * 1024 * 1024 + 512 * 1024  # 17.5 MiB: more than a data frame carries
assert OVERSIZED > MAX_PAYLOAD


def _bodies(site, name: str) -> list[str]:
    return [m["body"] for m in daemons.incoming(site, name)]


def _jobs(start: int, stop: int) -> list[str]:
    return [f"job {i}" for i in range(start, stop)]


def _elements(path: Path, kind: str) -> list[str]:
    """What an outgoing spool still holds: dirq elements, or the plain files of a directory spool."""
    if kind == "dirq":
        return sorted(QueueSimple(str(path)))
    return sorted(e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))


def _spool_of(site, kind: str) -> OutgoingSpool:
    """The site's outgoing spool as an accounting client fills it (files renamed into place)."""
    return OutgoingSpool(site.dir / "outgoing", kind)


def _log_lines(path: Path, *words: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if all(w in line for w in words)]


# -- 1. an item too big for a frame is set aside, not lost, and blocks nothing ----------------------------------


@pytest.mark.parametrize("kind, reject_option", [("dirq", False), ("directory", False), ("dirq", True)],
                         ids=["dirq", "directory", "dirq-outgoing-reject"])
def test_an_oversized_item_is_set_aside_with_its_reason_and_every_other_item_is_published(site, kind, reject_option):
    d = site.dir
    endpoint = ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    reject_dir = d / "refused" if reject_option else d / "outgoing.reject"
    options = {"spool": kind, **({"outgoing_reject": reject_dir} if reject_option else {})}
    pub = daemons.publisher(site, endpoint, **options)
    reader = daemons.subscriber(site, "portal", endpoint)
    big = b"x" * OVERSIZED
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        spool = _spool_of(site, kind)
        for i in range(5):
            spool.add(b"job %d" % i)
        big_name = spool.add(big)
        for i in range(5, 10):
            spool.add(b"job %d" % i)
        daemons.wait(lambda: len(_bodies(site, "portal")) == 10, what="the 10 others", logs=logs)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 10, what="publisher's count", logs=logs)
        assert pub.poll() is None, "the publisher died"
    finally:
        daemons.stop(pub, reader)
    # A directory spool goes by modification time, which may tie for files written in the same tick.
    bodies = _bodies(site, "portal")
    assert (bodies if kind == "dirq" else sorted(bodies, key=lambda b: int(b.split()[1]))) == _jobs(0, 10)
    assert _elements(d / "outgoing", kind) == []
    kept = big_name.replace("/", "-")
    assert sorted(p.name for p in reject_dir.iterdir()) == [kept, f"{kept}.reason"]
    assert (reject_dir / kept).read_bytes() == big  # set aside whole, not deleted
    reason = (reject_dir / f"{kept}.reason").read_text()
    assert reason.startswith(f"oversized: {OVERSIZED} bytes"), reason
    assert len(_log_lines(d / "publisher.log", "set aside", big_name, "oversized")) == 1
    assert daemons.status(site, "publisher")["sent"] == 10
    if reject_option:
        assert not (d / "outgoing.reject").exists()


# -- 2. unreadable entries ahead of a good one do not block it -------------------------------------------------

UNREADABLE = 1000

# Run by a process that is root without the capabilities that bypass file modes, so that mode 0 files are
# unreadable to it: the spool code as an unprivileged account runs it.
_TAKE_AS_UNPRIVILEGED = """
import json, sys
from zmqsec.drivers.spool import OutgoingSpool
spool = OutgoingSpool(sys.argv[1], sys.argv[2], settle=0)
first = spool.take(limit=1)
for name, _ in first:
    spool.done(name)
again = spool.take(limit=1)
print(json.dumps({"first": [[n, d.decode()] for n, d in first], "again": [[n, d.decode()] for n, d in again]}))
"""


def _as_unprivileged(*argv: str) -> subprocess.CompletedProcess:
    """``python -c`` with the spool code, as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH.

    Not ``user="nobody"``: the venv's interpreter lives under /root, which nobody may not enter."""
    return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def world_tmp():
    """A world-accessible scratch directory under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="zmqsec-unreadable-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _reject_entries(reject: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in reject.iterdir())
    return [n for n in names if not n.endswith(".reason")], [n for n in names if n.endswith(".reason")]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop root's file access")
@pytest.mark.parametrize("kind", ["dirq", "directory"])
def test_a_thousand_unreadable_files_ahead_of_a_good_one_do_not_block_it(world_tmp, kind):
    path = world_tmp / "outgoing"
    spool = OutgoingSpool(path, kind)
    bad = [spool.add(b"unreadable %d" % i) for i in range(UNREADABLE)]
    for i, name in enumerate(bad):
        os.chmod(path / name, 0)
        if kind == "directory":  # a plain directory spool goes by modification time: these are older
            stamp = time.time() - 100 + i / 1000
            os.utime(path / name, (stamp, stamp))
    good = spool.add(b"the good one")
    if kind == "dirq":
        assert sorted(QueueSimple(str(path)))[-1] == good  # dirq order: the good one is last

    run = _as_unprivileged(_TAKE_AS_UNPRIVILEGED, str(path), kind)
    assert run.returncode == 0, run.stderr
    taken = json.loads(run.stdout)
    assert taken == {"first": [[good, "the good one"]], "again": []}  # a batch of one: the unreadable don't count
    assert _elements(path, kind) == []
    kept, reasons = _reject_entries(world_tmp / "outgoing.reject")
    assert kept == sorted(n.replace("/", "-") for n in bad)  # each set aside once, none lost, none published
    assert reasons == sorted(f"{n}.reason" for n in kept)
    assert {(world_tmp / "outgoing.reject" / r).read_text().split(":")[0] for r in reasons} == {"unreadable"}
    assert run.stderr.count("set aside") == UNREADABLE


def test_a_thousand_directories_in_place_of_dirq_elements_do_not_block_a_good_one(tmp_path, caplog):
    """As root, a directory where a QueueSimple element file should be cannot be locked (no hard link to it)."""
    path = tmp_path / "outgoing"
    spool = OutgoingSpool(path)
    bucket = path / f"{int(time.time()) - 3600:08x}"  # an hour ago: ahead of anything added now
    bucket.mkdir()
    bad = []
    for i in range(UNREADABLE):
        name = f"{int(time.time()) - 3600:08x}{i:05x}0"
        (bucket / name).mkdir()
        (bucket / name / "stray").write_text("not an element")
        bad.append(f"{bucket.name}/{name}")
    good = spool.add(b"the good one")
    assert sorted(QueueSimple(str(path))) == [*bad, good]

    caplog.set_level("ERROR", logger="zmqsec.spool")
    assert spool.take(limit=1) == [(good, b"the good one")]
    spool.done(good)
    assert spool.take(limit=1) == []
    assert sorted(QueueSimple(str(path))) == []
    kept, reasons = _reject_entries(tmp_path / "outgoing.reject")
    assert kept == [n.replace("/", "-") for n in bad]
    assert reasons == [f"{n}.reason" for n in kept]
    assert all((tmp_path / "outgoing.reject" / n / "stray").read_text() == "not an element" for n in kept)
    assert len([r for r in caplog.records if "set aside" in r.getMessage()]) == UNREADABLE


# -- 3. an item that vanishes between take() and done() is already gone ----------------------------------------


@pytest.mark.parametrize("kind", ["dirq", "directory"])
def test_an_item_removed_by_someone_else_between_take_and_done_is_already_gone(tmp_path, kind):
    path = tmp_path / "outgoing"
    spool = OutgoingSpool(path, kind, settle=0)
    names = [spool.add(b"job %d" % i) for i in range(3)]
    taken = spool.take()
    assert sorted(data for _, data in taken) == [b"job 0", b"job 1", b"job 2"]  # (mtimes may tie in a directory)
    os.unlink(path / names[1])  # someone else removes it while it is being published
    for name, _ in taken:
        spool.done(name)  # no FileNotFoundError
    assert spool.take() == []
    assert _elements(path, kind) == []
    assert not (tmp_path / "outgoing.reject").exists()


def test_a_publisher_whose_items_are_removed_mid_batch_keeps_publishing(site):
    d = site.dir
    endpoint = ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    pub = daemons.publisher(site, endpoint)
    reader = daemons.subscriber(site, "portal", endpoint)
    template = b"job %d " + b"." * 1000
    removed = 0
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        pub.send_signal(signal.SIGSTOP)  # the whole batch is in the spool before the publisher looks again
        daemons.feed(site, 1000, template)
        outgoing = d / "outgoing"
        # dirq's lock() links NAME.lck and then touches the element: an hour-old mtime on every element tells a
        # lock that is complete (the item is taken) from one caught between the two calls (not taken yet).
        an_hour_ago = time.time() - 3600
        for element in QueueSimple(str(outgoing)):
            os.utime(outgoing / element, (an_hour_ago, an_hour_ago))
        pub.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not list(outgoing.glob("*/*.lck")) and time.monotonic() < deadline:
            pass  # a busy wait on purpose: the batch is taken and published within a fraction of a second
        pub.send_signal(signal.SIGSTOP)  # mid-batch: taken (locked), not yet done
        try:
            for lock in outgoing.glob("*/*.lck"):
                try:
                    if lock.stat().st_mtime < an_hour_ago + 60:
                        continue  # caught inside lock(): not taken yet, so removing it would be before the batch
                    os.unlink(lock.with_suffix(""))  # the element itself; the publisher holds its lock
                    removed += 1
                except FileNotFoundError:
                    pass  # done() got there first
        finally:
            pub.send_signal(signal.SIGCONT)
        assert removed > 0, "the batch was over before it could be interrupted"
        daemons.feed(site, 10, template, start=1000)
        daemons.wait(lambda: len(_bodies(site, "portal")) == 1010, what="all 1010", logs=logs)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 1010, what="publisher's count", logs=logs)
        daemons.wait(lambda: _elements(outgoing, "dirq") == [], what="the spool to empty", logs=logs)
        assert pub.poll() is None, "the publisher died"
    finally:
        daemons.stop(pub, reader)
    assert _bodies(site, "portal") == [(template % i).decode() for i in range(1010)]
    assert "Traceback" not in (d / "publisher.log").read_text()


# -- 4. a file still being written into a plain directory spool waits until it settles --------------------------


def test_a_half_written_file_is_published_whole_once_it_has_settled(site):
    d = site.dir
    endpoint = ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    pub = daemons.publisher(site, endpoint, spool="directory")  # --settle defaults to 1.0 s
    reader = daemons.subscriber(site, "portal", endpoint)
    record = "".join(f"JobName: job {i}\nWallDuration: 3600\n%%\n" for i in range(5000)).encode()
    half = len(record) // 2
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        with open(d / "outgoing" / "written-in-place", "wb") as f:
            f.write(record[:half])
            f.flush()
            time.sleep(0.5)  # the writer pauses for less than --settle: the scenario itself, not a wait
            assert _bodies(site, "portal") == []
            f.write(record[half:])
        OutgoingSpool(d / "outgoing", "directory").add(b"sentinel")  # after it, so published after it
        daemons.wait(lambda: len(_bodies(site, "portal")) >= 2, what="the record and the sentinel", logs=logs)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 2, what="publisher's count", logs=logs)
    finally:
        daemons.stop(pub, reader)
    assert sorted(_bodies(site, "portal")) == sorted([record.decode(), "sentinel"])  # whole, once (order: mtime)
    assert _elements(d / "outgoing", "directory") == []


# -- 5. a reader whose filesystem fills up waits for space, and then stores everything once, in order ----------


def _subscriber_argv(site, name: str, endpoint: str, incoming: Path, **options) -> list:
    """``zmqsec subscribe`` as :func:`kit.daemons.subscriber` runs it, with the incoming spool at ``incoming``."""
    c = site.certs[name]
    defaults = {"stream": daemons.STREAM, "endpoint": endpoint, "certificate": c.cert_path, "key": c.key_path,
                "capath": site.trust_dir, "publisher_dn": site.publisher_dn, "incoming": incoming,
                "status_file": site.dir / f"{name}.json", "status_interval": 0.2}
    return [sys.executable, "-m", "zmqsec.cli", "--log-level", "INFO", "subscribe",
            *daemons.flags({**defaults, **options})]


def _stored(fs: mounts.PrivateTmpfs) -> list[dict]:
    path = fs.inside("in-portal")
    return IncomingSpool(path).messages() if path.exists() else []


@pytest.mark.skipif(mounts.missing_tools() is not None, reason=str(mounts.missing_tools()))
def test_a_reader_whose_spool_fills_up_keeps_its_records_and_stores_them_once_space_returns(site):
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    # The incoming spool, its position file (<incoming>.state.json, §10.5) and its reject queue, all on an 8 MB
    # tmpfs: room for about 680 records of 3 pages each, more than the 250 sent.
    small = d / "spoolfs"
    pub = daemons.publisher(site, endpoint, journal=d / "journal", replay_endpoint=replay)
    fs = mounts.start(_subscriber_argv(site, "portal", endpoint, small / "in-portal", replay=replay,
                                       reject=small / "reject-portal"),
                      small, "8m", log=d / "portal.log")
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        assert fs.mounted()
        daemons.feed(site, 50)
        daemons.wait(lambda: len(_stored(fs)) == 50, what="first 50", logs=logs)

        fs.fill(leave=64 * 1024)  # room for a few more records: the filesystem fills up mid-batch
        daemons.feed(site, 200, start=50)
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 250, what="all published", logs=logs)
        daemons.wait(lambda: daemons.status(site, "portal").get("spool_full") is True, what="spool_full", logs=logs)
        time.sleep(2.5)  # a full retry period (FULL_RETRY): the reader must neither die nor lose anything meanwhile
        assert fs.proc.poll() is None, "the reader died on a full spool"
        status, stored = daemons.status(site, "portal"), _stored(fs)
        assert status["spool_full"] is True
        assert 50 <= len(stored) < 250
        assert [m["body"] for m in stored] == _jobs(0, len(stored))
        assert status["stored"] == len(stored)
        run, seq = stored[-1]["empaid"].rsplit("-", 1)
        assert status["position"] == {"run": run, "seq": int(seq)}  # the position is no further than what is stored

        fs.remove("filler")
        daemons.wait(lambda: len(_stored(fs)) == 250, timeout=60, what="all 250 once space returned", logs=logs)
        daemons.wait(lambda: daemons.status(site, "portal").get("spool_full") is False, what="spool_full cleared",
                     logs=logs)
        assert fs.proc.poll() is None, "the reader died"
        stored = _stored(fs)
        status = daemons.status(site, "portal")
    finally:
        daemons.stop(pub, fs.proc)
    assert [m["body"] for m in stored] == _jobs(0, 250)  # each once, in order
    assert len({m["empaid"] for m in stored}) == 250
    assert status["stored"] == 250 and status["gaps"] == 0 and status["unrecoverable"] == 0
    assert len(_log_lines(d / "portal.log", "no space left")) == 1  # logged once, when it filled up


# -- 6. a status file that cannot be written does not stop the records ------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_daemons_whose_status_files_cannot_be_written_log_it_and_keep_working(site):
    d = site.dir
    endpoint = ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    pub_dir, portal_dir = d / "status-publisher", d / "status-portal"
    pub_dir.mkdir()
    portal_dir.mkdir()
    pub = daemons.publisher(site, endpoint, status_file=pub_dir / "publisher.json")
    reader = daemons.subscriber(site, "portal", endpoint, status_file=portal_dir / "portal.json")
    try:
        daemons.wait(lambda: _read_json(portal_dir / "portal.json").get("epoch") == 1, what="key", logs=logs)
        daemons.feed(site, 20)
        daemons.wait(lambda: len(_bodies(site, "portal")) == 20, what="first 20", logs=logs)
        for gone in (pub_dir, portal_dir):  # the status directory is replaced by a file
            shutil.rmtree(gone)
            gone.write_text("not a directory\n")
        for name in ("publisher", "portal"):
            daemons.wait(lambda: _log_lines(d / f"{name}.log", "cannot be written"), what=f"{name} to log it", logs=logs)
        daemons.feed(site, 80, start=20)
        daemons.wait(lambda: len(_bodies(site, "portal")) == 100, what="all 100", logs=logs)
        assert pub.poll() is None and reader.poll() is None, "a daemon died"

        for back in (pub_dir, portal_dir):  # and put back: the status files come back
            back.unlink()
            back.mkdir()
        daemons.wait(lambda: _read_json(pub_dir / "publisher.json").get("sent") == 100, what="publisher status", logs=logs)
        daemons.wait(lambda: _read_json(portal_dir / "portal.json").get("stored") == 100, what="reader status", logs=logs)
    finally:
        daemons.stop(pub, reader)
    assert _bodies(site, "portal") == _jobs(0, 100)
    for name in ("publisher", "portal"):
        log = d / f"{name}.log"
        assert len(_log_lines(log, "cannot be written", "Not a directory")) == 1, log.read_text()[-2000:]
        assert len(_log_lines(log, "written again")) == 1


_KILLED_MID_BATCH = """
import os, sys
from zmqsec.bridges.outbox import Outbox
outbox = Outbox(sys.argv[1])
outbox.add(b"stored", "run-1")  # durable: committed and fsync'ed before add returns
for i in range(50):
    outbox.add(b"batch %d" % i, "run-2", durable=False)  # a batch, not yet synced
os._exit(9)  # killed before the batch's sync: nothing of it counts as taken
"""


def test_a_bridge_outbox_killed_mid_batch_keeps_every_stored_message_and_none_of_the_batch(tmp_path):
    """kill -9 while a batch is added and not yet committed: the reopened outbox holds every message stored
    before, and none of the batch (the bridge had not counted it as taken, so it is taken again)."""
    subprocess.run([sys.executable, "-c", _KILLED_MID_BATCH, str(tmp_path / "outbox")], check=False, timeout=60)
    reopened = Outbox(tmp_path / "outbox")
    try:
        assert [reopened.get(name) for name in reopened.pending(100)] == [(b"stored", "run-1")]
    finally:
        reopened.close()


_BRIDGE_WITH_WORKERS = {  # stomp-out's signing workers, stomp-in's opening workers: both started and busy
    "signing": """
import sys, time
from zmqsec.bridges.signer import BodyMaker
from zmqsec.keys.pemfiles import Credential
maker = BodyMaker(Credential.load(sys.argv[1], sys.argv[2]), workers=2)
maker.submit([b"record"] * 40)()
print("ready", flush=True)
time.sleep(120)
""",
    "opening": """
import sys, time
from zmqsec.bridges import smime
from zmqsec.bridges.opener import Opener
from zmqsec.keys.pemfiles import Credential
credential = Credential.load(sys.argv[1], sys.argv[2])
opener = Opener(credential, max_bytes=1 << 20, workers=2)
assert all(o.content == b"record" for o in opener.open([smime.sign(b"record", credential)] * 40)())
print("ready", flush=True)
time.sleep(120)
"""}


def _children(pid: int) -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == pid}


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.parametrize("work", sorted(_BRIDGE_WITH_WORKERS))
def test_the_workers_end_with_a_bridge_killed_with_kill_9(tmp_path, work):
    """stomp-out signs and stomp-in opens on worker processes; kill -9 of the bridge must not leave them behind
    (they waited forever before PR_SET_PDEATHSIG)."""
    from kit.pki import Pki
    from zmqsec.keys.ca import Role

    pki = Pki.create(tmp_path / "pki", "/O=zmqsec test/CN=Worker CA", bridge=Role.BRIDGE)
    cert = pki.certs["bridge"]
    bridge = subprocess.Popen([sys.executable, "-c", _BRIDGE_WITH_WORKERS[work], str(cert.cert_path), str(cert.key_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert bridge.stdout.readline().strip() == "ready"
        workers = {pid for pid in _children(bridge.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert len(workers) == 2, workers
    finally:
        bridge.kill()
        bridge.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and _parent(Path(f"/proc/{pid}"))
                                              for pid in workers):
        time.sleep(0.05)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists() and _parent(Path(f"/proc/{pid}"))]
    assert left == [], f"{work} workers {left} outlived their bridge"


OLD_SCHEMA = {"body": "binary", "empaid": "string"}  # the dirq outbox of earlier versions


def test_an_outbox_left_by_an_earlier_version_in_dirq_is_moved_into_the_database(tmp_path):
    """An outbox directory holding dirq elements (earlier versions), one of them locked by the dead bridge and
    a half-written one: the stored ones move into the database in order, nothing is left in dirq."""
    queue = Queue(str(tmp_path / "outbox"), schema=OLD_SCHEMA)
    names = [queue.add({"body": b"old %d" % i, "empaid": f"run-0/{i}"}) for i in range(3)]
    queue.lock(names[1])
    half = tmp_path / "outbox" / "temporary" / "6b0e2588761217"
    half.mkdir(parents=True)
    (half / "body").write_bytes(b"half")
    outbox = Outbox(tmp_path / "outbox")
    try:
        assert [outbox.get(name) for name in outbox.pending(10)] == [(b"old %d" % i, f"run-0/{i}") for i in range(3)]
        assert not half.exists() and list(Queue(str(tmp_path / "outbox"), schema=OLD_SCHEMA)) == []
    finally:
        outbox.close()


def test_a_publisher_restarted_after_a_kill_inside_take_or_remove_unlocks_and_tidies_the_spool(tmp_path):
    """A run killed with an item locked leaves a lock link beside it; one killed inside dirq's remove() (the item
    unlinked, its lock link not yet) leaves a lock link with no item.  The next owner unlocks the first, so that
    it is published at once (not after dirq's 10-minute purge), and removes the second."""
    first = OutgoingSpool(tmp_path / "out", exclusive=True)
    for body in (b"locked by the dead run", b"published and half removed by it"):
        QueueSimple(str(tmp_path / "out")).add(body)
    (locked, _), (half_removed, _) = first.take()
    (tmp_path / "out" / half_removed).unlink()  # remove() killed between its two unlinks
    first._lock.close()  # the process is gone: its exclusive lock with it
    spool = OutgoingSpool(tmp_path / "out", exclusive=True)
    assert [body for _, body in spool.take()] == [b"locked by the dead run"]
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                   if p.is_file() and p.name[0] != ".")
    assert files == [locked, f"{locked}.lck"]  # the item, locked by the new owner's take: nothing else
