"""What results.json holds beside the figures -- the machine, its load, the issue's targets met or
missed -- and the file itself, written whole or not at all."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import zmq


def machine() -> dict:
    """The CPU, platform and library versions the figures were taken on."""
    import cryptography

    try:
        openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        openssl = None
    model = None
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform(), "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "cryptography": cryptography.__version__,
            "openssl_cli": openssl}


def load() -> float:
    """One-minute load average: other work on the machine shows in every figure, so it is recorded."""
    return os.getloadavg()[0]


def evaluate_targets(results: dict) -> list[dict]:
    """The issue's targets against this run's figures (met, missed, or not measured in this profile)."""
    out = []
    stream = {r["payload_bytes"]: r for r in results.get("stream", []) if not r.get("journal")}
    for size, key, goal, text in ((1024, "msgs_ratio", 0.5, "zmqsec >= 50% of plain pyzmq messages/s at 1 KiB"),
                                  (65536, "mb_ratio", 0.85, "zmqsec >= 85% of plain pyzmq MB/s at 64 KiB")):
        value = stream[size][key] if size in stream else None
        out.append({"target": text, "goal": goal, "measured": value, "met": None if value is None else value >= goal})
    # The stream-speed issue's: one record per message, batching off (records are not batched yet)
    for size, key, goal, text in ((1024, "msgs_ratio", 1.0, "zmqsec records/s >= 1.0x plain pyzmq messages/s at 1 KiB"),
                                  (65536, "mb_ratio", 0.7, "zmqsec >= 0.7x plain pyzmq MB/s at 64 KiB")):
        value = stream[size][key] if size in stream else None
        out.append({"target": text, "goal": goal, "measured": value, "met": None if value is None else value >= goal})
    if 65536 in stream and stream[65536].get("zmqsec_reader_peak_rss_mb") is not None:
        value = stream[65536]["zmqsec_reader_peak_rss_mb"]
        out.append({"target": "reader peak RSS <= 256 MB, flat-out 64 KiB", "goal": 256.0, "measured": value,
                    "met": value <= 256.0})
    for r in results.get("stream", []):
        if r.get("journal"):
            out.append({"target": f"journal on >= 0.9x the journal-off messages/s ({r['payload_bytes']} B)",
                        "goal": 0.9, "measured": r["journal_ratio"], "met": r["journal_ratio"] >= 0.9})
        if r["payload_bytes"] == 1024:  # the stream issue's latency, at the latency rate
            journal = "journal on" if r.get("journal") else "journal off"
            for key, goal in (("p50_ms", 5.0), ("p99_ms", 10.0)):
                out.append({"target": f"latency {key[:3]} <= {goal:.0f} ms at {r['latency_rate_per_s']:,} records/s "
                                      f"(1024 B, {journal})",
                            "goal": goal, "measured": r[key], "met": r[key] <= goal})
    replay = results.get("replay")
    if replay:
        out.append({"target": "replay catch-up >= 5x the live rate (1 KiB records)", "goal": 5.0,
                    "measured": replay["catch_up_ratio"], "met": replay["catch_up_ratio"] >= 5.0})
        out.append({"target": "replay catch-up >= 20,000 records/s (1 KiB records)", "goal": 20_000,
                    "measured": replay["catch_up_records_per_s"], "met": replay["catch_up_records_per_s"] >= 20_000})
    rows = [r for r in results.get("rekey", []) if r["readers"] == 10_000]
    for r in rows:
        out.append({"target": f"revoking one of 10,000 readers in effect within 1 s ({r['mode']})", "goal": 1.0,
                    "measured": r["rekey_s"], "met": r["rekey_s"] <= 1.0})
    for r in results.get("rekey", []):
        if r["mode"] == "tree" and r["readers"] == 100_000:
            out.append({"target": "revoking one of 100,000 readers in tree mode: <= 4 KB received by any remaining "
                                  "reader", "goal": 4096, "measured": r["bytes_per_reader"],
                        "met": r["bytes_per_reader"] <= 4096})
            # From the registry change: the driver's reload of the registry, the rekey, the slowest sampled reader.
            in_effect = r["registry_reload_s"] + r["switch_s"]
            out.append({"target": "revoking one of 100,000 readers in tree mode: new key in effect at sampled readers "
                                  "<= 1 s after the registry change", "goal": 1.0, "measured": round(in_effect, 4),
                        "met": in_effect <= 1.0})
    revocations = results.get("revocation") or []
    for revocation in [revocations] if isinstance(revocations, dict) else revocations:  # a dict in older files
        n = revocation["readers"]
        if n == 10_000:
            out.append({"target": "revoking one of 10,000 readers in effect within 1 s (running publisher: registry "
                                  f"removal to new key, {revocation['mode']})", "goal": 1.0,
                        "measured": revocation["revocation_to_new_key_s"],
                        "met": revocation["revocation_to_new_key_s"] <= 1.0})
            out.append({"target": "revoking one of 10,000 readers in effect within 1 s (running publisher: certificate "
                                  f"on the CRL to new key, {revocation['mode']})", "goal": 1.0,
                        "measured": revocation["crl_revocation_to_new_key_s"],
                        "met": revocation["crl_revocation_to_new_key_s"] <= 1.0})
        goal = {10_000: 0.5, 100_000: 2.0}.get(n)
        if goal is not None:
            out.append({"target": f"revocation by a new CRL at {n:,} readers <= {goal} s (running publisher, "
                                  f"{revocation['mode']})", "goal": goal,
                        "measured": revocation["crl_revocation_to_new_key_s"],
                        "met": revocation["crl_revocation_to_new_key_s"] <= goal})
    start = results.get("start")
    if start and start["readers"] == 100_000:
        out.append({"target": "publisher start at 100,000 readers <= 60 s", "goal": 60.0, "measured": start["start_s"],
                    "met": start["start_s"] <= 60.0})
        out.append({"target": "publisher start at 100,000 readers: peak RSS <= 1 GB (with its load's workers)",
                    "goal": 1024.0, "measured": start["peak_rss_mb"], "met": start["peak_rss_mb"] <= 1024.0})
    if not rows:
        out.append({"target": "revoking one of 10,000 readers in effect within 1 s", "goal": 1.0, "measured": None,
                    "met": None, "note": "this profile stops below 10,000 readers"})
    for r in results.get("bridge", []):
        direction = r.get("direction", "out")
        out.append({"target": f"bridge {direction} >= 20x openssl per message ({r['body_bytes']} B, {r['mode']})",
                    "goal": 20.0, "measured": r["ratio"], "met": r["ratio"] >= 20.0})
        if r["body_bytes"] == 1024:  # the rates of issue #13: 1 KiB, sign-only and signed and encrypted
            goal = 1000.0 if r["mode"] == "sign" else 600.0
            out.append({"target": f"bridge {direction} >= {goal:.0f} msg/s (1024 B, {r['mode']})", "goal": goal,
                        "measured": r["zmqsec_msgs_per_s"], "met": r["zmqsec_msgs_per_s"] >= goal})
    for r in results.get("bridge_steady", []):
        # Keeping up: the outbox never holds more than the window being sent and the batch being taken.
        goal = 2 * r["window"]
        out.append({"target": f"bridge out keeps up with {r['input_msgs_per_s']:.0f} msg/s (1024 B, {r['mode']}): "
                              f"outbox <= {goal} messages", "goal": goal, "measured": r["max_backlog"],
                    "met": r["max_backlog"] <= goal})
    return out


def round_figures(value, digits: int = 4):
    """``value`` with every float, however deeply nested, rounded to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: round_figures(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_figures(v, digits) for v in value]
    return value


def write_results(results: dict, out: Path) -> None:
    """Write ``results`` as JSON to ``out`` through a temporary file, so a reader never sees half of it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
