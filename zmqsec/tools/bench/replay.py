"""The replay section: a reader (the real ``zmqsec subscribe``, storing into its incoming spool) is
stopped while a journaled publisher streams 1 KiB records at a steady live rate, and started again
after the outage.  How fast it stores the backlog (replayed from the publisher's journal), how long
until it is live again, and that it then holds every record exactly once.

The reader's progress is read from its status file (``position.seq``, written every
``STATUS_INTERVAL`` seconds): one run, so sequence numbers count records."""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

from zmqsec.drivers.journal import Journal
from zmqsec.drivers.publisher import Publisher
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import ReaderRegistry

from .config import STREAM, BenchError, Profile
from .pki import Pki
from .stats import disk_bytes
from .workers import Worker

log = logging.getLogger("zmqsec.bench")

STATUS_INTERVAL = 0.1  # seconds between the reader's status files: the resolution of the times below
LIVE_WITHIN = 1.0  # the reader is live again once it has stored everything published this many seconds ago
CATCH_UP_LIMIT = 300.0  # seconds the restarted reader may take to be live again before the section fails
PAYLOAD = 1024


def _record(seq_hint: int) -> bytes:
    """A 1 KiB accounting-like text record (the incoming spool stores text)."""
    head = f"APEL-individual-job-message: v0.3\nLocalJobId: bench-{seq_hint}\n".encode()
    return head + b"x" * (PAYLOAD - len(head) - 1) + b"\n"


def _live_publisher(conn, pki: Pki, registry: Path, journal_dir: Path) -> None:
    """Publisher process: a journaled zmqsec Publisher with a replay endpoint, streaming at the rate the
    parent gives until told to stop; answers "head" (records published so far) at any time."""
    journal = Journal(journal_dir)
    publisher = Publisher(STREAM, ["tcp://127.0.0.1:*"], Credential.load(pki.publisher_cert, pki.publisher_key),
                          ReaderRegistry(registry), trust_dir=pki.trust_dir, journal=journal,
                          replay_endpoints=["tcp://127.0.0.1:*"])
    conn.send(("bound", publisher.endpoints[0], publisher.replay.endpoints[0]))
    published, rate, started = 0, 0.0, 0.0
    try:
        while True:
            if rate:
                due = started + published / rate
                while (left := due - time.perf_counter()) > 0 and not conn.poll(0):
                    publisher.run_idle(min(left, 0.01))
            if conn.poll(0):
                command, *args = conn.recv()
                if command == "go":
                    rate, started = args[0], time.perf_counter()
                elif command == "head":
                    conn.send(("head", published, time.monotonic()))
                elif command == "subscribers":
                    conn.send(("subscribed", publisher.wait_for_subscribers(1, args[0])))
                elif command == "stop":
                    publisher.flush()
                    publisher.run_idle(0.5)  # the last checkpoint out, before the socket closes
                    conn.send(("stopped", published))
                    return
            elif rate:
                publisher.publish(_record(published + 1))
                published += 1
            else:
                publisher.run_idle(0.02)
    finally:
        publisher.close()
        journal.close()


class _Reader:
    """``zmqsec subscribe`` with a position file and the publisher's replay endpoint."""

    def __init__(self, pki: Pki, directory: Path, endpoint: str, replay: str) -> None:
        cert, key = pki.reader(0)
        self.status_path = directory / "reader.json"
        self.incoming = directory / "incoming"
        self.log = directory / "reader.log"
        self.args = [sys.executable, "-m", "zmqsec.cli", "--log-level", "WARNING", "subscribe", "--stream", STREAM,
                     "--endpoint", endpoint, "--replay", replay, "--certificate", str(cert), "--key", str(key),
                     "--capath", str(pki.trust_dir), "--publisher-dn", pki.publisher_dn,
                     "--incoming", str(self.incoming), "--state", str(directory / "reader.state.json"),
                     "--status-file", str(self.status_path), "--status-interval", str(STATUS_INTERVAL)]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the reader process."""
        self.status_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def status(self) -> dict:
        """Its last status file ({} before the first, or while one is being replaced)."""
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def seq(self) -> int:
        """The sequence number of the last record it stored (0 before any)."""
        position = self.status().get("position") or {}
        return position.get("seq", 0)

    def stop(self) -> None:
        """Stop it as systemd does (SIGTERM), and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def check_alive(self) -> None:
        """Raise :class:`BenchError` (with its log's tail) if the reader died."""
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"the replay reader exited with code {self.process.returncode}:\n"
                             f"{self.log.read_text()[-2000:]}")


def _await(reader: _Reader, predicate, timeout: float, what: str) -> float:
    """Poll until ``predicate()``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        reader.check_alive()
        time.sleep(STATUS_INTERVAL / 4)
    raise BenchError(f"replay: {what} not within {timeout:.0f} s (reader log {reader.log})")


def _catch_up(reader: _Reader, head, backlog_end: int, t_restart: float, rate: int):
    """Sample the restarted reader's position beside the publisher's head until it has been live for a
    second: (when the backlog was stored, when it was live again, the samples)."""
    t_backlog = t_live = None
    progress = []
    deadline = t_restart + CATCH_UP_LIMIT
    while time.monotonic() < deadline:
        reader.check_alive()
        seq, (published, now) = reader.seq(), head()
        progress.append((round(now - t_restart, 3), seq, published))
        if t_backlog is None and seq >= backlog_end:
            t_backlog = now
        if t_live is None and t_backlog is not None and seq >= published - rate * LIVE_WITHIN:
            t_live = now
        if t_live is not None and now - t_live >= 1.0:
            return t_backlog, t_live, progress
        time.sleep(STATUS_INTERVAL / 2)
    raise BenchError(f"replay: the reader was not live again within {CATCH_UP_LIMIT:.0f} s (reader log {reader.log})")


def _spool_rate(directory: Path, signer: str, count: int = 2000) -> float:
    """Records/s an incoming spool on this disk takes when nothing else runs: what the reader stores into (one
    dirq element per record, the SSM schema), written as the reader writes, synced once per 100: the ceiling
    of any catch-up."""
    spool = IncomingSpool(directory)
    t0 = time.perf_counter()
    for i in range(count):
        spool.accept(_record(i), signer, f"ceiling-{i}", durable=False)
        if i % 100 == 99:
            spool.sync()
    spool.sync()
    return count / (time.perf_counter() - t0)


def run_replay(profile: Profile, pki: Pki, workdir: Path) -> dict:
    """One outage of ``profile.replay_outage_s`` at ``profile.replay_rate`` records/s; see the module's doc."""
    directory = workdir / "replay"
    directory.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    rate, outage = profile.replay_rate, profile.replay_outage_s
    publisher = Worker(ctx, _live_publisher, pki, pki.registry(1, "replay"), directory / "journal")
    reader = None
    try:
        _, endpoint, replay = publisher.receive(120)
        reader = _Reader(pki, directory, endpoint, replay)
        reader.start()
        if not publisher.call("subscribers", 60.0)[1]:
            raise BenchError("replay: the reader's subscription never reached the publisher")
        _await(reader, lambda: reader.status().get("epoch", 0) > 0, 60, "the reader's first key")

        def head() -> tuple[int, float]:
            _, count, at = publisher.call("head")
            return count, at

        publisher.conn.send(("go", rate))
        _await(reader, lambda: reader.seq() > rate, 60, "the reader live before the outage")
        reader.stop()
        stopped_seq = reader.seq()  # its status file at exit: everything stored before the outage
        head_at_stop, t_stop = head()
        log.info("replay: reader stopped at record %d; %.0f s outage at %d records/s", stopped_seq, outage, rate)
        time.sleep(outage)
        head_at_restart, t_restart = head()
        reader.start()
        t_backlog, t_live, progress = _catch_up(reader, head, head_at_restart, t_restart, rate)
        _, published = publisher.call("stop", timeout=60)
        _await(reader, lambda: reader.seq() >= published, 120, "every record stored")
        reader.stop()
        final = reader.status()
    finally:
        if reader is not None:
            reader.stop()
        publisher.stop()
    stored = IncomingSpool(reader.incoming).messages()
    ceiling = _spool_rate(directory / "ceiling", pki.publisher_dn)
    distinct = len({m["body"] for m in stored})
    backlog = head_at_restart - stopped_seq
    catch_up = backlog / (t_backlog - t_restart)
    live = (head_at_restart - head_at_stop) / (t_restart - t_stop)
    log.info("replay: %d records missed in %.0f s, stored again at %.0f records/s (%.1fx the live %.0f/s; the "
             "incoming spool alone takes %.0f/s on this disk); live again %.1f s after the restart; %d of %d records "
             "stored, %d distinct", backlog, outage, catch_up, catch_up / live, live, ceiling, t_live - t_restart,
             len(stored), published, distinct)
    return {"records": backlog, "outage_s": t_restart - t_stop, "payload_bytes": PAYLOAD,
            "catch_up_records_per_s": catch_up, "live_records_per_s": live, "catch_up_ratio": catch_up / live,
            "time_to_live_s": t_live - t_restart, "backlog_stored_s": t_backlog - t_restart,
            "spool_records_per_s": ceiling, "catch_up_of_spool": catch_up / ceiling,
            "live_within_s": LIVE_WITHIN, "status_interval_s": STATUS_INTERVAL,
            "published": published, "stored": len(stored), "distinct": distinct,
            "exactly_once": len(stored) == distinct == published,
            "gaps": final.get("gaps"), "unrecoverable": final.get("unrecoverable"),
            "repairs": final.get("repairs"), "journal_bytes": disk_bytes(directory / "journal"),
            "progress": progress[:: max(1, len(progress) // 300)]}  # (s after the restart, reader seq, published)

