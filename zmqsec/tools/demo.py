"""``zmqsec demo``: the whole system on local defaults, with no configuration.

It makes a throw-away CA and certificates, starts the real daemons as separate
processes -- a publisher with its journal, three readers (one behind an archive
relay), the STOMP bridge into ActiveMQ and, as the central APEL repository, the
inbound bridge that verifies what arrives -- streams APEL-style job records
through them, removes one reader from the registry mid-stream, kills a reader and
the bridge with kill -9 and restarts them (they replay what they missed), and
prints plain progress lines (per-reader counts, the epoch switch, the removed
reader going dark, the restarted ones catching up, messages arriving through the
broker).  It ends by checking what each party received
and printing a summary; everything it made stays in one directory it names.

The demo is an operator at a terminal: it only drives the ``zmqsec`` commands
and reads their spools and status files, so what it shows is what a
deployment does.  The broker at ``--broker`` is used if it speaks STOMP;
otherwise a private ActiveMQ is started on free ports inside the directory.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from zmqsec.drivers.spool import IncomingSpool, OutgoingSpool
from zmqsec.keys.ca import CertificateAuthority, Role
from zmqsec.keys.dn import parse_slash_dn, slash_dn
from zmqsec.keys.errors import CertificateRejected
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import TrustStore, Usage

from .deployment import DemoError, Deployment, free_port, parse_broker, why_no_stomp, zmqsec_command
from .records import job_ids, job_record

STREAM = "apel.jobs"
READERS = ("portal", "dashboard", "repository")
REVOKED = "dashboard"
BEHIND_RELAY = "repository"
KILLED_READER = "portal"
KILLED = (KILLED_READER, "bridge")  # killed with kill -9 at three quarters of the stream, then restarted
STATUS_INTERVAL = "0.2"
PROGRESS_EVERY = 0.5  # seconds between progress lines
REFUSALS = {"not-a-recipient": "a new key announcement that is not wrapped for it",
            "no-key": "data frames it has no key for"}


def _say(step: str, text: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {step:<8} {text}", flush=True)


# -- progress -----------------------------------------------------------------------------


class Progress:
    """Plain progress lines for a terminal or a CI log: a status line every half second, events as they happen."""

    def __init__(self, deployment: Deployment, total: int, clock=time.monotonic) -> None:
        self.d = deployment
        self.total = total
        self.clock = clock
        self.started = clock()
        self.fed = 0
        self.revoked = False
        self.epochs: dict[str, int] = {}
        self.refusals: set[tuple[str, str]] = set()
        self.down: set[str] = set()  # daemons killed and not yet restarted
        self.next_line = 0.0

    def _events(self, statuses: dict[str, dict]) -> None:
        for name, status in statuses.items():
            epoch = status.get("epoch", 0)
            if epoch != self.epochs.get(name, 0) and epoch:
                if name == "publisher" and epoch > 1:
                    _say("epoch", f"publisher rekeyed: epoch {self.epochs.get(name)} -> {epoch} "
                         f"({status.get('last_rekey_cause')}, {status.get('last_rekey_seconds', 0) * 1000:.0f} ms), "
                         f"{status.get('readers')} readers hold the new key")
                elif name != "publisher":
                    _say("epoch", f"{name} {'holds' if epoch == 1 else 'switched to'} epoch {epoch}")
                self.epochs[name] = epoch
            for reason in status.get("rejected", {}):
                if (name, reason) not in self.refusals:  # e.g. the removed reader going dark
                    self.refusals.add((name, reason))
                    _say("refused", f"{name} refuses {REFUSALS.get(reason, 'frames')} [{reason}]")

    def line(self) -> str:
        """The status line: records fed and published, the epoch, each reader's count, and both broker legs."""
        pub = self.d.status("publisher")
        readers = "  ".join(f"{n} {self.d.stored(n)}" + (" (removed)" if n == REVOKED and self.revoked else "")
                            + (" (killed)" if n in self.down else "") for n in READERS)
        bridge, central = self.d.status("bridge"), self.d.status("central")
        sent = "killed" if "bridge" in self.down else bridge.get("sent", 0)
        return (f"{self.clock() - self.started:5.1f}s  fed {self.fed}/{self.total}  published {pub.get('sent', 0)} "
                f"epoch {pub.get('epoch', '-')} | {readers} | bridge->broker {sent}  "
                f"broker->central {central.get('accepted', 0)}")

    def update(self, force: bool = False) -> None:
        """Print new events (epoch switches, refusals) and, every half second or when forced, the status line.

        Raises :class:`DemoError` if a daemon has exited.
        """
        self.d.check_alive()
        self._events({n: self.d.status(n) for n in ("publisher", *READERS, "bridge") if n not in self.down})
        now = self.clock()
        if force or now >= self.next_line:
            self.next_line = now + PROGRESS_EVERY
            _say("stream", self.line())

    def wait(self, done, what: str, timeout: float, feed=None) -> None:
        """Show progress until ``done()``; ``feed()`` is called on each turn to add records."""
        deadline = self.clock() + timeout
        while not done():
            if self.clock() > deadline:
                self.update(force=True)
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}; the logs are in {self.d.logs}")
            if feed is not None:
                feed()
            self.update()
            time.sleep(0.05)
        self.update()


# -- the demo --------------------------------------------------------------------------------


def _openssl_verdict(trust_dir: Path, cert: Path) -> str:
    result = subprocess.run(["openssl", "verify", "-CApath", str(trust_dir), "-crl_check", str(cert)],
                            capture_output=True, text=True)
    return "OK" if result.returncode == 0 else "refused"


def make_pki(workdir: Path) -> tuple[CertificateAuthority, dict]:
    """A throw-away CA, certificates for every party, and the reader registry; each verdict beside openssl's."""
    ca = CertificateAuthority.init(workdir / "ca", subject=parse_slash_dn("/O=zmqsec demo/CN=zmqsec demo CA"), rsa_bits=2048)
    _say("ca", f"throw-away CA in {ca.directory}, hashed trust directory {ca.trust_dir}")
    roles = {"publisher": Role.PUBLISHER, **{n: Role.READER for n in READERS}, "bridge": Role.BRIDGE, "central": Role.SERVER}
    usages = {Role.PUBLISHER: Usage.SIGN, Role.READER: Usage.ENCRYPT, Role.BRIDGE: Usage.SIGN, Role.SERVER: Usage.ENCRYPT}
    issued = {name: ca.issue(role=role, cn=f"{name}.demo", out_dir=workdir / "certs") for name, role in roles.items()}
    trust = TrustStore.from_directory(ca.trust_dir)
    registry = ReaderRegistry(workdir / "readers.d")
    for name in (*READERS, "bridge"):
        registry.add(issued[name].certificate, trust)
    print(f"{'certificate':<22} {'role':<10} {'zmqsec':<24} openssl verify -crl_check", flush=True)
    for name, item in issued.items():
        try:
            trust.validate(item.certificate, usage=usages[roles[name]])
            ours = "OK"
        except CertificateRejected as exc:
            ours = f"refused [{exc.reason}]"
        print(f"{item.cert_path.name:<22} {roles[name].value:<10} {ours:<24} {_openssl_verdict(ca.trust_dir, item.cert_path)}",
              flush=True)
    _say("readers", f"{', '.join(READERS)} and the bridge may read the stream ({registry.directory}, keys 0600 in "
         f"{workdir / 'certs'})")
    return ca, issued


def start_daemons(d: Deployment, ca: CertificateAuthority, issued: dict, broker: str, queue: str) -> None:
    """Publisher (journaled, serving replay), archive relay, three readers, the outbound bridge and the central
    repository's inbound bridge.  Readers and the bridge keep positions and fetch what they miss by replay."""
    workdir = d.workdir
    dn = {name: slash_dn(item.certificate.subject) for name, item in issued.items()}
    pem = {name: ("--certificate", item.cert_path, "--key", item.key_path) for name, item in issued.items()}
    common = ("--capath", ca.trust_dir, "--status-interval", STATUS_INTERVAL)
    stream_ep, relay_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    replay_ep, archive_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    d.start("publisher", "publish", "--stream", STREAM, "--endpoint", stream_ep, *pem["publisher"], *common,
            "--registry", workdir / "readers.d", "--outgoing", workdir / "outgoing", "--poll-interval", "0.05",
            "--journal", workdir / "journal", "--replay-endpoint", replay_ep, "--status-file", d.status_file("publisher"))
    d.start("relay", "relay", "--in", stream_ep, "--out", relay_ep, "--journal", workdir / "relay-journal",
            "--replay-endpoint", archive_ep)
    _say("start", f"publisher on {stream_ep}, its journal in {workdir / 'journal'} served for replay on {replay_ep}")
    _say("start", f"archive relay {stream_ep} -> {relay_ep}, keeping the ciphertext for replay on {archive_ep}")
    for name in READERS:
        endpoint = relay_ep if name == BEHIND_RELAY else stream_ep
        replay = ("--replay", archive_ep, "--replay", replay_ep) if name == BEHIND_RELAY else ("--replay", replay_ep)
        d.start(name, "subscribe", "--stream", STREAM, "--endpoint", endpoint, *replay, "--publisher-dn", dn["publisher"],
                *pem[name], *common, "--incoming", workdir / "incoming" / name, "--status-file", d.status_file(name))
        _say("start", f"reader {name} <- {endpoint}{' (through the relay)' if name == BEHIND_RELAY else ''}")
    d.start("bridge", "bridge", "stomp-out", "--stream", STREAM, "--endpoint", stream_ep, "--replay", replay_ep,
            "--publisher-dn", dn["publisher"], *pem["bridge"], *common, "--hosts", broker, "--destination", queue,
            "--server-cert", issued["central"].cert_path, "--outbox", workdir / "outbox", "--status-file", d.status_file("bridge"))
    _say("start", f"bridge stomp-out -> {queue} on {broker} (S/MIME signed by bridge.demo, encrypted to central.demo)")
    dn_list = workdir / "central" / "valid_dns"
    dn_list.parent.mkdir()
    dn_list.write_text(dn["bridge"] + "\n")
    d.start("central", "bridge", "stomp-in", *pem["central"], *common, "--hosts", broker, "--destination", queue,
            "--incoming", workdir / "central" / "incoming", "--reject", workdir / "central" / "reject",
            "--dn-list", dn_list, "--status-file", d.status_file("central"))
    _say("start", f"central repository: bridge stomp-in <- {queue}, verifies and stores in {workdir / 'central' / 'incoming'}")


def run(workdir: Path, *, records: int, rate: float, broker: str, rng: random.Random | None = None,
        clock=time.monotonic) -> int:
    """The whole demo; returns 0 if every party received what it should, 1 if not."""
    rng = rng or random.Random()
    host, port = parse_broker(broker)
    if workdir.exists():
        raise DemoError(f"--dir {workdir} already exists; name a new directory (the demo keeps everything it makes there)")
    workdir.mkdir(parents=True)
    began = clock()
    ca, issued = make_pki(workdir)
    queue = f"/queue/zmqsec.demo.{uuid.uuid4().hex[:8]}"  # ours alone, even on a shared broker
    d = Deployment(workdir)
    fed: list[str] = []  # job ids, in the order they went into the outgoing spool
    try:
        why = why_no_stomp(host, port)
        if why is None:
            _say("broker", f"using the STOMP broker at {host}:{port}")
        else:
            _say("broker", f"no STOMP broker at {host}:{port} ({why}); starting a private ActiveMQ in {workdir / 'broker'}")
            host, port = d.start_broker()
            _say("broker", f"ActiveMQ answers on {host}:{port} (STOMP)")
        start_daemons(d, ca, issued, f"{host}:{port}", queue)
        progress = Progress(d, records, clock)
        progress.wait(lambda: all(d.status(n).get("epoch") == 1 for n in (*READERS, "bridge"))
                      and d.status("central").get("broker"), "every reader to hold the key of epoch 1", 60)

        spool = OutgoingSpool(workdir / "outgoing")
        now, revoke_at = int(time.time()), records // 2

        def feeder(limit: int):
            """Add records to the outgoing spool at ``rate`` per second, up to ``limit`` in all."""
            start, first = clock(), len(fed)

            def feed() -> None:
                while len(fed) < min(limit, first + int((clock() - start) * rate) + 1):
                    record = job_record(len(fed), rng, now)
                    spool.add(record)
                    fed.extend(job_ids([record.decode()]))
                    progress.fed = len(fed)
            return feed

        _say("feed", f"{records} APEL job records into {spool.path} at {rate:g}/s")
        # Pause at half-way until every reader holds it all, so "after the rekey" is exact.
        progress.wait(lambda: progress.fed == revoke_at and all(d.status(n).get("received") == revoke_at for n in READERS),
                      f"the first {revoke_at} records to reach every reader", 60, feeder(revoke_at))
        revoked_dn = slash_dn(issued[REVOKED].certificate.subject)
        removed = subprocess.run(zmqsec_command("keys", "readers", "--registry", workdir / "readers.d", "remove", revoked_dn),
                                 capture_output=True, text=True)
        if removed.returncode != 0:
            raise DemoError(f"zmqsec keys readers remove failed: {removed.stderr.strip()}")
        progress.revoked = True
        _say("revoke", f"zmqsec keys readers remove '{revoked_dn}': {removed.stdout.strip()}")
        progress.wait(lambda: all(d.status(n).get("epoch") == 2 for n in ("publisher", *READERS, "bridge") if n != REVOKED),
                      "the rekey to epoch 2", 30)
        kill_at, back_at = records * 3 // 4, records * 7 // 8
        progress.wait(lambda: progress.fed == kill_at and d.stored(KILLED_READER) == kill_at
                      and d.status("central").get("accepted", 0) >= kill_at,
                      f"the first {kill_at} records to reach {' and '.join(KILLED)}", 60, feeder(kill_at))
        restart = {name: d.args(name) for name in KILLED}
        for name in KILLED:
            d.kill(name)
            progress.down.add(name)
        _say("kill", f"kill -9 {' and '.join(KILLED)} after record {kill_at}; the stream goes on without them")
        progress.wait(lambda: progress.fed == back_at and d.stored(BEHIND_RELAY) == back_at,
                      f"records up to {back_at} to reach the other readers", 60, feeder(back_at))
        progress.update(force=True)  # the killed ones frozen, the others on
        for name, args in restart.items():
            d.restart(name, args)
            progress.down.discard(name)
        _say("restart", f"{' and '.join(KILLED)} restarted: they resume from their saved positions and replay "
             f"records {kill_at + 1}..{back_at} from the publisher's journal")
        progress.wait(lambda: progress.fed == records and all(d.stored(n) == records for n in READERS if n != REVOKED)
                      and d.status("central").get("accepted", 0) >= records,
                      "every record to reach the readers and the central repository", 120, feeder(records))
        time.sleep(0.5)  # anything the removed reader could still decrypt would show up now
        progress.update(force=True)
    finally:
        d.stop()
    return summarize(d, issued, fed, revoke_at, (kill_at, back_at), queue, clock() - began)


def summarize(d: Deployment, issued: dict, fed: list[str], revoke_at: int, outage: tuple[int, int], queue: str,
              seconds: float) -> int:
    """Check what each party received, from the spools themselves; print (and keep) the summary."""
    records, everything, before = len(fed), set(fed), set(fed[:revoke_at])
    pub, bridge, central = d.status("publisher"), d.status("bridge"), d.status("central")
    lines, failures = [], []

    def check(ok: bool, text: str) -> None:
        lines.append(f"  {'ok  ' if ok else 'FAIL'} {text}")
        if not ok:
            failures.append(text)

    left = len(OutgoingSpool(d.workdir / "outgoing").take())
    check(pub.get("sent") == records and left == 0,
          f"publisher: {pub.get('sent')}/{records} records published; epoch {pub.get('epoch')} "
          f"since the last rekey ({pub.get('last_rekey_cause')})")
    for name in READERS:
        s = d.status(name)
        messages = IncomingSpool(d.workdir / "incoming" / name).messages()
        got = job_ids(m["body"] for m in messages)
        if name == REVOKED:
            refused = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items())) or "nothing"
            check(got == before and len(messages) == revoke_at and s.get("epoch") == 1,
                  f"{name}: removed after record {revoke_at}; received {len(got & before)} before and "
                  f"{len(got - before)} of the {records - revoke_at} after the rekey, stayed at epoch {s.get('epoch')} "
                  f"(frames it could not read: {refused})")
        else:
            via = " (via the archive relay)" if name == BEHIND_RELAY else ""
            killed = (f", killed with kill -9 after record {outage[0]} and restarted ({s.get('repaired', 0)} frames "
                      "replayed)") if name in KILLED else ""
            check(got == everything and len(messages) == records and s.get("gaps") == 0 and s.get("unrecoverable") == 0,
                  f"{name}{via}: {len(got & everything)}/{records} stored, each once, {s.get('gaps')} lost{killed}; "
                  f"epoch {s.get('epoch')}")
    stored = IncomingSpool(d.workdir / "central" / "incoming").messages()
    refused = sum(central.get("rejected", {}).values())
    check(job_ids(m["body"] for m in stored) == everything and len(stored) == records and refused == 0
          and {m["signer"] for m in stored} == {slash_dn(issued["bridge"].certificate.subject)},
          f"broker: the bridge (killed with kill -9 after record {outage[0]} and restarted, {bridge.get('repaired', 0)} "
          f"frames replayed) sent to {queue} with receipts; the central repository verified and stored "
          f"{len(stored)}, each once (decrypted; signature, chain, CRL and DN checked; "
          f"{central.get('duplicates', 0)} re-sent copies not stored again), refused {refused}")
    summary = [f"summary ({seconds:.0f} s): " + (f"{len(failures)} check(s) FAILED" if failures else "every check passed"),
               *lines,
               f"everything is in {d.workdir}",
               "  ca/ certs/ readers.d/  outgoing/ journal/ relay-journal/ incoming/<reader>/ central/incoming/ "
               "(dirq, SSM schema)  status/ logs/"
               + ("  broker/ (the private ActiveMQ, stopped)" if d.private_broker else ""),
               f"try: zmqsec status {d.status_file('publisher')}",
               f"     zmqsec keys readers --registry {d.workdir / 'readers.d'} list --trust {d.workdir / 'ca' / 'certificates'}"]
    print(flush=True)
    print("\n".join(summary), flush=True)
    (d.workdir / "summary.txt").write_text("\n".join(summary) + "\n")
    return 1 if failures else 0


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds through run()'s finally, which stops every daemon and the broker


def cmd_demo(args) -> int:
    """``zmqsec demo``: run the demo in ``--dir`` (a new directory); 130 if interrupted, else :func:`run`'s result."""
    workdir = args.dir or Path(f"zmqsec-demo-{dt.datetime.now():%Y%m%d-%H%M%S}")
    if args.records < 2 or args.rate <= 0:
        raise DemoError("--records must be at least 2 and --rate positive")
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return run(workdir.resolve(), records=args.records, rate=args.rate, broker=args.broker)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every process the demo started is stopped; what it made is in {workdir.resolve()}",
              file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(subparsers) -> None:
    """Add the ``demo`` command to the top-level parser."""
    p = subparsers.add_parser("demo", help="run a publisher, readers, a relay and the STOMP bridge on local defaults")
    p.add_argument("--dir", type=Path, help="where to put everything (default: ./zmqsec-demo-TIMESTAMP)")
    p.add_argument("--records", type=int, default=400, help="job records to stream (default 400)")
    p.add_argument("--rate", type=float, default=40.0, help="records per second (default 40)")
    p.add_argument("--broker", default="localhost:61613",
                   help="STOMP broker HOST:PORT to use if it answers; otherwise a private ActiveMQ is started (default localhost:61613)")
    p.set_defaults(func=cmd_demo)
