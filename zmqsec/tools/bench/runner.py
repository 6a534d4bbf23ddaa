"""One run: the throw-away PKI, each chosen section in turn, then results.json and its plots."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .bridge_run import run_bridge
from .broker import PrivateBroker
from .config import BenchConfig
from .memory import run_memory
from .pki import SHARED_READER_KEYS, make_pki
from .plots import write_plots
from .rekey import run_rekey
from .replay import run_replay
from .report import evaluate_targets, load, machine, round_figures, write_results
from .start import run_start
from .stream import run_stream

log = logging.getLogger("zmqsec.bench")


def run(config: BenchConfig) -> dict:
    """Run the chosen sections; write the JSON (and plots) and return the results."""
    profile = config.profile
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    results: dict = {"profile": profile.name, "started": started.isoformat(timespec="seconds"), "machine": machine(),
                     "settings": dataclasses.asdict(profile), "sections": list(config.sections), "notes": [],
                     "load_average": {"start": load()}}
    if results["load_average"]["start"] > (os.cpu_count() or 1) / 2:
        log.warning("the machine is busy (load average %.1f on %d CPUs): figures will be lower and noisier",
                    results["load_average"]["start"], os.cpu_count() or 1)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="zmqsec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The stream's operator log lines (a rekey, a key accepted) would be noise here, and cost time.
    quiet = {name: logging.getLogger(name).level
             for name in ("zmqsec.publisher", "zmqsec.reader", "zmqsec.stomp", "stomp.py")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        needed = max([1]
                     + (list(profile.rekey_readers) if "rekey" in config.sections else [])
                     + ([profile.memory_readers] if "memory" in config.sections else []))
        t = time.perf_counter()
        pki = make_pki(workdir / "pki", needed)
        results["setup_s"] = time.perf_counter() - t
        log.info("set-up: CA and %d reader certificates (sharing %d key pairs) in %.1f s", needed, SHARED_READER_KEYS,
                 results["setup_s"])
        if "stream" in config.sections:
            results["stream"] = run_stream(profile, pki, workdir)
            results["load_average"]["after_stream"] = load()
        if "replay" in config.sections:
            results["replay"] = run_replay(profile, pki, workdir)
            results["load_average"]["after_replay"] = load()
        if "rekey" in config.sections:
            results["rekey"], notes = run_rekey(profile, pki, config.group_size)
            results["notes"] += notes
            results["load_average"]["after_rekey"] = load()
        if "bridge" in config.sections:
            if config.broker:
                results["broker"] = f"{config.broker[0]}:{config.broker[1]} (given)"
                results.update(run_bridge(profile, pki, *config.broker, workdir))
            else:
                with PrivateBroker(workdir / "broker") as broker:
                    results["broker"] = f"{broker.host}:{broker.port} (private, started by the bench)"
                    results.update(run_bridge(profile, pki, broker.host, broker.port, workdir))
            results["load_average"]["after_bridge"] = load()
        if "memory" in config.sections:
            results["memory"], revocation = run_memory(profile, pki, config.group_size)
            results.setdefault("revocation", []).append(revocation)
            results["load_average"]["after_memory"] = load()
        if "start" in config.sections:
            results["start"], revocations = run_start(profile, config.group_size)
            results.setdefault("revocation", []).extend(revocations)
            results["load_average"]["after_start"] = load()
        results["targets"] = evaluate_targets(results)
        results["duration_s"] = time.perf_counter() - t0
        results = round_figures(results)
        write_results(results, config.out)
        if config.plots:
            for path in write_plots(results, config.out.parent):
                log.info("plot %s", path)
        log.info("results in %s after %.0f s", config.out, results["duration_s"])
        return results
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        if config.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
