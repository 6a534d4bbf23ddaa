"""Helpers for tests that run zmqsec daemons as real processes: start, wait on their status files, stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from zmqsec.spool import IncomingSpool, OutgoingSpool

READERS = ("portal", "dashboard", "central")
PUBLISHER_DN = "/O=zmqsec test/CN=publisher.example.org"  # the conftest site's publisher


def cli(*args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zmqsec.cli", *map(str, args)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def publisher(site, endpoint, **extra) -> subprocess.Popen:
    d, c = site["dir"], site["certs"]["publisher"]
    args = ["--log-level", "INFO", "publish", "--stream", "apel.jobs", "--endpoint", endpoint,
            "--certificate", c.cert_path, "--key", c.key_path, "--capath", site["ca"].trust_dir,
            "--registry", d / "readers.d", "--outgoing", d / "outgoing", "--status-file", d / "publisher.json",
            "--status-interval", "0.2", "--poll-interval", "0.05"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return cli(*args, log=d / "publisher.log")


def subscriber(site, name, *endpoints, **extra) -> subprocess.Popen:
    d, c = site["dir"], site["certs"][name]
    args = ["--log-level", "INFO", "subscribe", "--stream", "apel.jobs", "--certificate", c.cert_path,
            "--publisher-dn", PUBLISHER_DN,
            "--key", c.key_path, "--capath", site["ca"].trust_dir, "--incoming", d / f"in-{name}",
            "--status-file", d / f"{name}.json", "--status-interval", "0.2"]
    for e in endpoints:
        args += ["--endpoint", e]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return cli(*args, log=d / f"{name}.log")


def feed(site, count: int, template: bytes = b"job %d", start: int = 0) -> None:
    """Drop messages ``start`` .. ``start + count - 1`` into the site's outgoing spool, as an admin would."""
    spool = OutgoingSpool(site["dir"] / "outgoing")
    for i in range(start, start + count):
        spool.add(template % i)


def status(site, name) -> dict:
    try:
        return json.loads((site["dir"] / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(predicate, timeout=30.0, what="condition", logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    details = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{details}")


def incoming(site, name) -> list[dict]:
    path = site["dir"] / f"in-{name}"
    return IncomingSpool(path).messages() if path.exists() else []


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def endpoint(kind, tmp_path):
    if kind == "tcp":
        with zmq.Context.instance().socket(zmq.PUB) as probe:
            port = probe.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"
    return f"ipc://{tmp_path}/apel.ipc"
