"""zmqsec daemons as real processes, for the e2e tests: start them through the CLI on a site (:class:`kit.pki.Pki`),
feed the publisher's spool, await what their status files and spools show, stop them.

Every daemon of a site works in ``site.dir``: ``NAME.log``, status file ``NAME.json`` (written every 0.2 s),
a reader's incoming queue ``in-NAME``, the publisher's outgoing spool ``outgoing``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from kit import ports
from zmqsec.drivers.spool import IncomingSpool, OutgoingSpool

STREAM = "apel.jobs"


def cli(*args, log: Path) -> subprocess.Popen:
    """``python -m zmqsec.cli ARGS`` in the background, stdout and stderr appended to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "zmqsec.cli", *map(str, args)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def flags(options: dict) -> list[str]:
    """``{"status_interval": 0.2}`` as ``["--status-interval", "0.2"]``; a list or tuple value repeats the flag."""
    args = []
    for name, value in options.items():
        for one in value if isinstance(value, (list, tuple)) else [value]:
            args += [f"--{name.replace('_', '-')}", str(one)]
    return args


def publisher(site, *endpoints: str, **options) -> subprocess.Popen:
    """``zmqsec publish`` of stream apel.jobs on ``endpoints``, for the site's registry, from ``outgoing``;
    ``options`` add or override flags (``reannounce_interval="3600"``, ``curve_secret_key=...``)."""
    d, c = site.dir, site.certs["publisher"]
    defaults = {"stream": STREAM, "endpoint": endpoints, "certificate": c.cert_path, "key": c.key_path,
                "capath": site.trust_dir, "registry": site.registry_dir, "outgoing": d / "outgoing",
                "status_file": d / "publisher.json", "status_interval": 0.2, "poll_interval": 0.05}
    return cli("--log-level", "INFO", "publish", *flags({**defaults, **options}), log=d / "publisher.log")


def subscriber(site, name: str, *endpoints: str, **options) -> subprocess.Popen:
    """``zmqsec subscribe`` as reader ``name`` on ``endpoints``, accepting the site's publisher, into ``in-NAME``;
    ``options`` add or override flags."""
    d, c = site.dir, site.certs[name]
    defaults = {"stream": STREAM, "endpoint": endpoints, "certificate": c.cert_path, "key": c.key_path,
                "capath": site.trust_dir, "publisher_dn": site.publisher_dn, "incoming": d / f"in-{name}",
                "status_file": d / f"{name}.json", "status_interval": 0.2}
    return cli("--log-level", "INFO", "subscribe", *flags({**defaults, **options}), log=d / f"{name}.log")


def relay(site, name: str, upstream: str, downstream: str, **options) -> subprocess.Popen:
    """``zmqsec relay --in UPSTREAM --out DOWNSTREAM``, logging to ``NAME.log``; ``options`` add flags."""
    return cli("--log-level", "INFO", "relay", "--in", upstream, "--out", downstream, *flags(options),
               log=site.dir / f"{name}.log")


def bridge_out(site, name: str, endpoint: str, *, reader: str, **options) -> subprocess.Popen:
    """``zmqsec bridge stomp-out`` reading the stream on ``endpoint`` as the site's certificate ``reader``, into the
    outbox ``outbox-NAME``; status ``NAME.json``.  ``options`` add the broker's flags (``hosts``, ``destination``, ...)."""
    d, c = site.dir, site.certs[reader]
    defaults = {"stream": STREAM, "endpoint": endpoint, "publisher_dn": site.publisher_dn, "certificate": c.cert_path,
                "key": c.key_path, "capath": site.trust_dir, "outbox": d / f"outbox-{name}",
                "status_file": d / f"{name}.json", "status_interval": 0.2}
    return cli("--log-level", "INFO", "bridge", "stomp-out", *flags({**defaults, **options}), log=d / f"{name}.log")


def bridge_in(site, name: str, *, certificate: str, **options) -> subprocess.Popen:
    """``zmqsec bridge stomp-in`` as the site's certificate ``certificate`` (it decrypts what is encrypted to it),
    validating signers against the site's CA, storing into the incoming queue ``in-NAME`` (so :func:`incoming`
    reads it) with refusals in ``reject-NAME``; status ``NAME.json``.  ``options`` add the broker's flags
    (``hosts``, ``destination``, ``dn_list``, ...)."""
    d, c = site.dir, site.certs[certificate]
    defaults = {"certificate": c.cert_path, "key": c.key_path, "capath": site.trust_dir, "incoming": d / f"in-{name}",
                "reject": d / f"reject-{name}", "status_file": d / f"{name}.json", "status_interval": 0.2}
    return cli("--log-level", "INFO", "bridge", "stomp-in", *flags({**defaults, **options}), log=d / f"{name}.log")


def feed(site, count: int, template: bytes = b"job %d", start: int = 0) -> None:
    """Drop messages ``start`` .. ``start + count - 1`` into the site's outgoing spool, as an admin would."""
    spool = OutgoingSpool(site.dir / "outgoing")
    for i in range(start, start + count):
        spool.add(template % i)


def status(site, name: str) -> dict:
    """The daemon's last status file, or {} while it has written none (or is replacing it)."""
    try:
        return json.loads((site.dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def incoming(site, name: str) -> list[dict]:
    """What reader ``name`` stored in its incoming queue (body, signer, empaid), [] before it made the queue."""
    path = site.dir / f"in-{name}"
    return IncomingSpool(path).messages() if path.exists() else []


def bodies(site, name: str) -> list[str]:
    """The bodies in ``name``'s incoming queue ``in-NAME``, oldest first, read straight from dirq's files (the
    queue holds thousands: locking each element, as a consumer must, would take seconds per look)."""
    root = site.dir / f"in-{name}"
    if not root.exists():
        return []
    elements = sorted(e for d in root.iterdir() if d.is_dir() and len(d.name) == 8
                      for e in d.iterdir() if e.is_dir() and not e.name.startswith("."))
    return [(e / "body").read_text() for e in elements if (e / "body").exists()]


def in_stream_order(site, name: str, expected: list[str]) -> None:
    """Assert that ``name``'s incoming queue holds every body of ``expected`` once, stored in the stream's order
    (one run, sequence numbers 1, 2, 3, ...).  The bodies themselves may differ from the order they were fed in:
    the publisher takes its outgoing spool in the order a directory listing shows, and a listing taken while
    the feeder adds can show a later item before an earlier one."""
    root = site.dir / f"in-{name}"
    elements = sorted(e for d in root.iterdir() if d.is_dir() and len(d.name) == 8
                      for e in d.iterdir() if e.is_dir() and not e.name.startswith("."))
    ids = [(e / "empaid").read_text().rpartition("-") for e in elements]
    assert len({run for run, _, _ in ids}) <= 1, "more than one run"
    assert [int(seq) for _, _, seq in ids] == list(range(1, len(ids) + 1)), "not in the stream's order"
    bodies = [(e / "body").read_text() for e in elements]
    assert sorted(bodies) == sorted(expected) and len(bodies) == len(expected), \
        (len(bodies), len(set(bodies)), len(expected))


def logs(site, *names: str) -> list[Path]:
    """The log files of the named daemons, for :func:`wait` to show when it times out."""
    return [site.dir / f"{name}.log" for name in names]


def wait(predicate, timeout: float = 30.0, what: str = "condition", logs=()) -> None:
    """Return once ``predicate()`` is true; after ``timeout`` raise AssertionError naming ``what``, with the
    tails of ``logs``.  Status files and spools have no change notification, so this polls them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # the polling interval of the wait, not a delay
    details = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{details}")


def stop(*procs: subprocess.Popen) -> None:
    """SIGTERM each process still running, then wait for all (SIGKILL after 10 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def endpoint(kind: str, directory: Path) -> str:
    """A fresh endpoint for a daemon to bind: ``tcp`` on a free loopback port, else ``ipc`` in ``directory``."""
    if kind == "tcp":
        return ports.tcp_endpoint()
    return f"ipc://{directory}/apel.ipc"
