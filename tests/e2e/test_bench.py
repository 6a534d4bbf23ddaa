"""`zmqsec bench --quick` runs end to end and writes well-formed results (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

STREAM = ("payload_bytes", "plain_msgs_per_s", "zmqsec_msgs_per_s", "plain_mb_per_s", "zmqsec_mb_per_s",
          "msgs_ratio", "mb_ratio", "p50_ms", "p99_ms")
REKEY = ("readers", "rekey_s", "switch_s", "bytes_total", "bytes_per_reader")
BRIDGE = ("body_bytes", "zmqsec_msgs_per_s", "openssl_cli_msgs_per_s", "ratio")
MEMORY = ("publisher_10k_readers_rss_mb", "reader_rss_mb")
REPLAY = ("records", "outage_s", "catch_up_records_per_s", "live_records_per_s", "time_to_live_s")


def _broker_args() -> list[str]:
    """The suite's broker when there is one (./run test exports its directory); else the bench starts its own."""
    where = os.environ.get("ZMQSEC_TEST_BROKER")
    if not where:
        return []
    if Path(where).is_dir():
        state = json.loads((Path(where) / "broker.json").read_text())
        where = f"{state['host']}:{state['stomp_ports'][0]}"
    return ["--broker", where]


def _positive(row: dict, keys) -> list[str]:
    return [f"{k}={row.get(k)!r}" for k in keys
            if not isinstance(row.get(k), (int, float)) or isinstance(row.get(k), bool) or row[k] <= 0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "zmqsec.cli", "bench", "--quick", "--out", str(out), *_broker_args()],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), out.parent


@pytest.mark.timeout(660)
def test_stream_has_both_payloads_journal_off_and_on_with_positive_figures(results):
    data, _ = results
    assert data["profile"] == "quick"
    rows = {(r["payload_bytes"], r["journal"]): r for r in data["stream"]}
    assert set(rows) == {(1024, False), (1024, True), (65536, False), (65536, True)}
    for row in rows.values():
        assert not _positive(row, STREAM), row
    for size in (1024, 65536):
        on = rows[size, True]
        assert on["journal_off_msgs_per_s"] == rows[size, False]["zmqsec_msgs_per_s"]
        assert on["journal_bytes_per_message"] > size  # the journal really held every frame
        assert {t["target"] for t in data["targets"]} >= {f"journal on >= 0.9x the journal-off messages/s ({size} B)"}
    latency = {f"latency {p} <= {goal} ms at 1,000 records/s (1024 B, journal {j})" for p, goal in (("p50", 5), ("p99", 10))
               for j in ("off", "on")}
    assert latency <= {t["target"] for t in data["targets"]}


@pytest.mark.timeout(660)
def test_replay_catches_up_a_stopped_reader_exactly_once(results):
    data, _ = results
    replay = data["replay"]
    assert not _positive(replay, REPLAY), replay
    assert replay["exactly_once"] is True, replay
    assert replay["stored"] == replay["published"] and replay["gaps"] == 0 and replay["unrecoverable"] == 0
    assert replay["records"] >= replay["live_records_per_s"] * 3  # the quick profile's 5 s outage, at least 3 s of it
    assert replay["backlog_stored_s"] <= replay["time_to_live_s"]


@pytest.mark.timeout(660)
def test_rekey_covers_each_reader_count_and_locks_the_revoked_reader_out(results):
    data, _ = results
    recommended = [r for r in data["rekey"] if r.get("recommended", True)]
    assert {r["readers"] for r in recommended} == {10, 100, 1000}
    for row in data["rekey"]:
        assert not _positive(row, REKEY), row
        assert row["revoked_reader_locked_out"] is True, row
        assert row["bytes_per_reader"] <= row["bytes_total"]
    modes = {(r["readers"], r["mode"]) for r in data["rekey"]}
    assert modes == {(n, m) for n in (10, 100, 1000) for m in ("single-envelope", "grouped", "tree")}
    for row in data["rekey"]:
        if row["mode"] == "tree":  # one small update and the epoch announcement, whatever the reader count
            assert row["bytes_per_reader_of"] == "every remaining reader" and row["bytes_per_reader"] < 8192, row


@pytest.mark.timeout(660)
def test_bridge_compares_both_directions_both_modes_and_both_sizes(results):
    data, _ = results
    assert sorted((r["direction"], r["body_bytes"], r["mode"]) for r in data["bridge"]) == sorted(
        (direction, size, mode) for direction in ("out", "in") for size in (1024, 65536)
        for mode in ("sign", "sign+encrypt"))
    for row in data["bridge"]:
        assert not _positive(row, BRIDGE), row
        if row["direction"] == "out":  # the broker alone, with ready-made bodies, is the ceiling of the bridge
            assert not _positive(row, ("broker_msgs_per_s", "zmqsec_without_outbox_msgs_per_s")), row
            # cryptography's own S/MIME builders on the same work, beside the bridge's signing path
            assert not _positive(row, ("zmqsec_crypto_ms", "cryptography_pkcs7_crypto_ms")), row


@pytest.mark.timeout(660)
def test_bridge_under_a_steady_input_sends_everything_it_took(results):
    data, _ = results
    steady = {r["mode"]: r for r in data["bridge_steady"]}
    assert set(steady) == {"sign", "sign+encrypt"}
    for row in steady.values():
        assert row["input_msgs_per_s"] == 400 and row["body_bytes"] == 1024
        # 4 s at 400/s, fed at 50 ms turns: every message taken, and the outbox empty after the drain
        assert row["messages"] >= 0.9 * row["seconds"] * row["input_msgs_per_s"], row
        assert 0 < row["max_backlog"] and row["median_backlog"] <= row["max_backlog"], row
    targets = {t["target"] for t in data["targets"]}
    assert {f"bridge out keeps up with 400 msg/s (1024 B, {mode}): outbox <= 200 messages" for mode in steady} <= targets


@pytest.mark.timeout(660)
def test_memory_and_plots(results):
    data, directory = results
    assert not _positive(data["memory"], MEMORY), data["memory"]
    assert data["memory"]["publisher_readers"] > 0
    for name in ("stream.png", "replay.png", "rekey.png", "bridge.png", "memory.png"):
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert all(t["met"] in (True, False, None) for t in data["targets"])


@pytest.mark.timeout(660)
def test_start_times_a_real_publisher_on_every_core_and_on_one(results):
    data, _ = results
    start = data["start"]
    assert start["readers"] == 2500 and start["cores"] >= 2, start
    assert start["start_s"] > 0 and start["one_core_start_s"] > 0 and start["peak_rss_mb"] > 0, start
    assert abs(start["speedup"] - start["one_core_start_s"] / start["start_s"]) < 0.05, start
    assert "after_start" in data["load_average"]
    # Revocations on that running publisher: a row of the revocation list, each sample a rekey it saw.
    rows = [r for r in data["revocation"] if r["readers"] == 2500]
    assert len(rows) == 1 and rows[0]["mode"] == start["mode"] == "grouped", data["revocation"]
    # Then the same registry in key tree mode, less the six readers revoked on the grouped publisher.
    tree = [r for r in data["revocation"] if r["mode"] == "tree"]
    assert len(tree) == 1 and tree[0]["readers"] == start["tree_readers"] == 2494 and start["tree_start_s"] > 0, tree
    for row in rows + tree:
        assert len(row["samples"]) == len(row["crl_samples"]) == row["repetitions"] == 3, row
        assert all(t > 0 for t in row["samples"] + row["crl_samples"]), row
    assert [r["readers"] for r in data["revocation"]] == [data["settings"]["memory_readers"], 2500, 2494]
