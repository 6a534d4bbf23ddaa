"""The start section: ``zmqsec publish`` started on a registry of many readers (the full profile:
100,000), timed until its status file shows every reader and the first epoch key, with the peak
resident memory of the publisher and its worker processes; once as it runs (its first registry load
judged on every core) and once pinned to one core with ``taskset`` (the load then stays in one
process), side by side."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zmqsec.keys.ca import CertificateAuthority, KeyType, Role, generate_key
from zmqsec.keys.dn import parse_slash_dn

from .config import STREAM, BenchError, Profile

log = logging.getLogger("zmqsec.bench")

SHARED_KEYS = 3
TIMEOUT = 900.0  # seconds a start may take before the section gives up


def _scratch() -> Path:
    """A directory on tmpfs when there is one: the CA writes every certificate it issues."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="zmqsec-bench-start-", dir=base))


def _site(directory: Path, readers: int) -> dict:
    """An EC CA (quick to sign with), a publisher and ``readers`` reader certificates over a few RSA key pairs,
    each certificate its own leaf, registered by hard link."""
    ca = CertificateAuthority.init(directory / "ca", subject=parse_slash_dn("/O=zmqsec bench/CN=start CA"),
                                   key_type=KeyType.EC)
    publisher = ca.issue(role=Role.PUBLISHER, cn="publisher.start", out_dir=directory / "certs")
    keys = [generate_key() for _ in range(SHARED_KEYS)]
    registry = directory / "registry"
    registry.mkdir()
    for i in range(readers):
        issued = ca.issue(role=Role.READER, cn=f"reader-{i:06d}.start", key=keys[i % SHARED_KEYS],
                          out_dir=directory / "readers")
        os.link(issued.cert_path, registry / issued.cert_path.name)
    return {"trust": ca.trust_dir, "registry": registry, "cert": publisher.cert_path, "key": publisher.key_path}


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the load's workers), in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/status").read_text().split("VmRSS:")[1].split()[0])
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def _start(site: dict, readers: int, directory: Path, pin: bool) -> dict:
    status = directory / "publisher.json"
    status.unlink(missing_ok=True)
    (directory / "outgoing").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "zmqsec.cli", "--log-level", "WARNING", "publish", "--stream", STREAM,
               "--endpoint", f"ipc://{directory}/start.ipc", "--certificate", str(site["cert"]),
               "--key", str(site["key"]), "--capath", str(site["trust"]), "--registry", str(site["registry"]),
               "--outgoing", str(directory / "outgoing"), "--status-file", str(status), "--status-interval", "0.2"]
    if pin:
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, state = 0.0, {}
    try:
        while True:
            peak = max(peak, _tree_rss_mb(proc.pid))
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("readers") == readers and state.get("epoch", 0) >= 1:
                return {"start_s": time.monotonic() - t0, "peak_rss_mb": peak, "rss_mb": _tree_rss_mb(proc.pid)}
            if proc.poll() is not None or time.monotonic() - t0 > TIMEOUT:
                raise BenchError(f"start: the publisher with {readers} readers did not start within {TIMEOUT:.0f} s "
                                 f"(status {state}): {proc.stderr.read().decode(errors='replace')[-2000:] if proc.poll() is not None else ''}")
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_start(profile: Profile) -> dict:
    """The start row (see the module docstring)."""
    n = profile.start_readers
    directory = _scratch()
    try:
        t = time.perf_counter()
        site = _site(directory, n)
        log.info("start: %d reader certificates issued in %.0f s", n, time.perf_counter() - t)
        cores = len(os.sched_getaffinity(0))
        spread = _start(site, n, directory, pin=False)
        log.info("start: %d readers, %d cores: %.1f s, peak %.0f MB", n, cores, spread["start_s"], spread["peak_rss_mb"])
        one = _start(site, n, directory, pin=True) if shutil.which("taskset") else None
        if one:
            log.info("start: %d readers, one core: %.1f s, peak %.0f MB", n, one["start_s"], one["peak_rss_mb"])
        return {"readers": n, "cores": cores, "start_s": spread["start_s"], "peak_rss_mb": spread["peak_rss_mb"],
                "rss_after_start_mb": spread["rss_mb"],
                "one_core_start_s": one and one["start_s"], "one_core_peak_rss_mb": one and one["peak_rss_mb"],
                "speedup": one and one["start_s"] / spread["start_s"]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
