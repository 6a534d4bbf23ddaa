"""The start section: ``zmqsec publish`` started on a registry of many readers (the full profile:
100,000) in grouped mode, timed until its status file shows every reader and the first epoch key,
with the peak resident memory of the publisher and its worker processes; once as it runs (its first
registry load judged on every core) and once pinned to one core with ``taskset`` (the load then stays
in one process), side by side.  Then revocations on the running publisher, as in the memory section:
a registry file deleted, a certificate put on the CA's CRL, each timed until the status file shows
the new epoch.  Then the same publisher in key tree mode (docs/PROTOCOL.md §4.6): its start, and
revocations of other readers on it."""

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
from zmqsec.keys.pemfiles import load_certificate

from .config import GROUPED, STREAM, TREE, BenchError, Profile
from .grouping import auto_group_size
from .stats import median

log = logging.getLogger("zmqsec.bench")

SHARED_KEYS = 3
TIMEOUT = 900.0  # seconds a start may take before the section gives up
REVOCATIONS = 3  # of each kind


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
    return {"ca": ca, "trust": ca.trust_dir, "registry": registry, "cert": publisher.cert_path,
            "key": publisher.key_path}


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


def _state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _revoke(site: dict, status: Path, proc: subprocess.Popen, names: list[str]) -> tuple[list[float], list[float]]:
    """Alternately a registry file deleted and a certificate put on the CRL, each timed until a new epoch."""
    removals, crls = [], []
    for i in range(REVOCATIONS):
        for kind, times, name in (("registry", removals, names[2 * i]), ("crl", crls, names[2 * i + 1])):
            before = _state(status).get("epoch", 0)
            t0 = time.monotonic()
            path = site["registry"] / name
            if kind == "registry":
                path.unlink()
            else:
                site["ca"].revoke(load_certificate(path))
            while _state(status).get("epoch", 0) <= before:
                if proc.poll() is not None or time.monotonic() - t0 > TIMEOUT:
                    raise BenchError(f"start: revoking by {kind} did not rekey within {TIMEOUT:.0f} s")
                time.sleep(0.01)
            times.append(time.monotonic() - t0)
    return removals, crls


def _start(site: dict, readers: int, directory: Path, group_size: int, pin: bool, revoke: list[str] = (),
           tree: bool = False) -> dict:
    status = directory / "publisher.json"
    status.unlink(missing_ok=True)
    (directory / "outgoing").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "zmqsec.cli", "--log-level", "WARNING", "publish", "--stream", STREAM,
               "--endpoint", f"ipc://{directory}/start.ipc", "--certificate", str(site["cert"]),
               "--key", str(site["key"]), "--capath", str(site["trust"]), "--registry", str(site["registry"]),
               "--outgoing", str(directory / "outgoing"), "--status-file", str(status), "--status-interval", "0.05",
               *(["--rotation-mode", "tree"] if tree else ["--group-size", str(group_size)])]
    if pin:
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    t0 = time.monotonic()
    log_path = directory / "publisher.log"
    with open(log_path, "wb") as err:  # a file, not a pipe: nobody reads it while the publisher runs
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    peak, state = 0.0, {}
    try:
        while True:
            peak = max(peak, _tree_rss_mb(proc.pid))
            state = _state(status)
            if state.get("readers") == readers and state.get("epoch", 0) >= 1:
                started = {"start_s": time.monotonic() - t0, "peak_rss_mb": peak, "rss_mb": _tree_rss_mb(proc.pid)}
                if revoke:
                    started["removals"], started["crls"] = _revoke(site, status, proc, list(revoke))
                return started
            if proc.poll() is not None or time.monotonic() - t0 > TIMEOUT:
                tail = log_path.read_bytes()[-2000:].decode(errors="replace")
                raise BenchError(f"start: the publisher with {readers} readers did not start within {TIMEOUT:.0f} s "
                                 f"(status {state}): {tail}")
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_start(profile: Profile, group_size: int | None = None) -> tuple[dict, list[dict]]:
    """The start row and the revocation rows, grouped and key tree (see the module docstring)."""
    n = profile.start_readers
    g = group_size or auto_group_size(n)
    directory = _scratch()
    try:
        t = time.perf_counter()
        site = _site(directory, n)
        log.info("start: %d reader certificates issued in %.0f s", n, time.perf_counter() - t)
        cores = len(os.sched_getaffinity(0))
        one = _start(site, n, directory, g, pin=True) if shutil.which("taskset") else None
        if one:
            log.info("start: %d readers, one core: %.1f s, peak %.0f MB", n, one["start_s"], one["peak_rss_mb"])
        ordered = sorted(p.name for p in site["registry"].iterdir())
        spread = _start(site, n, directory, g, pin=False, revoke=ordered[-2 * REVOCATIONS:])
        log.info("start: %d readers, %d cores: %.1f s, peak %.0f MB", n, cores, spread["start_s"], spread["peak_rss_mb"])
        log.info("start: %d readers, revocation to new key: %s s by registry, %s s by CRL", n,
                 spread["removals"], spread["crls"])
        # Key tree mode on the same registry, less the readers revoked above (files gone, or on the CRL).
        remaining = n - 2 * REVOCATIONS
        tree = _start(site, remaining, directory, g, pin=False, revoke=ordered[-4 * REVOCATIONS:-2 * REVOCATIONS],
                      tree=True)
        log.info("start: %d readers, key tree: %.1f s, peak %.0f MB; revocation to new key: %s s by registry, "
                 "%s s by CRL", remaining, tree["start_s"], tree["peak_rss_mb"], tree["removals"], tree["crls"])

        def revocation(mode: str, run: dict, readers: int) -> dict:
            return {"readers": readers, "mode": mode, "group_size": g if mode == GROUPED else None,
                    "revocation_to_new_key_s": median(run["removals"]), "samples": run["removals"],
                    "crl_revocation_to_new_key_s": median(run["crls"]), "crl_samples": run["crls"],
                    "repetitions": REVOCATIONS}

        return {"readers": n, "mode": GROUPED, "group_size": g, "cores": cores, "start_s": spread["start_s"],
                "peak_rss_mb": spread["peak_rss_mb"], "rss_after_start_mb": spread["rss_mb"],
                "one_core_start_s": one and one["start_s"], "one_core_peak_rss_mb": one and one["peak_rss_mb"],
                "speedup": one and one["start_s"] / spread["start_s"],
                "tree_readers": remaining, "tree_start_s": tree["start_s"], "tree_peak_rss_mb": tree["peak_rss_mb"],
                "tree_rss_after_start_mb": tree["rss_mb"]}, [
                revocation(GROUPED, spread, n), revocation(TREE, tree, remaining)]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
