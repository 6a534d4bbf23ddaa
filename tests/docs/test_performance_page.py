"""docs/performance.md speaks of the bench run in bench/results.json: the run it names, and every table row
and verdict it gives, are that file's."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "performance.md").read_text()
RESULTS = json.loads((ROOT / "bench" / "results.json").read_text())


def _section(title: str) -> str:
    """The page's text from the heading ``## title`` to the next ``## `` heading."""
    return PAGE.split(f"\n## {title}\n")[1].split("\n## ")[0]


def _line(text: str, start: str) -> str:
    """The first line of ``text`` that starts with ``start``."""
    return next(line for line in text.splitlines() if line.startswith(start))


def _kib(size: int) -> str:
    return f"{size // 1024} KiB"


def _verdict(met) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def test_the_page_names_the_run_in_results_json_a_full_run_of_every_section():
    assert f'"started": "{RESULTS["started"]}"' in PAGE
    assert RESULTS["profile"] == "full"
    assert RESULTS["sections"] == ["stream", "replay", "rekey", "bridge", "memory", "start"]
    assert f"it took {RESULTS['duration_s'] / 60:.0f} minutes" in PAGE


def test_every_target_of_the_run_is_in_the_targets_table_with_its_verdict():
    table = _section("Targets")
    for target in RESULTS["targets"]:
        line = _line(table, f"| {target['target']} |")
        assert line.rstrip().endswith(f"| {_verdict(target['met'])} |"), line
        if target["measured"] is not None:
            assert f"| {target['measured']:g} |" in line, line
    assert len([line for line in table.splitlines() if line.startswith("| ") and "|---" not in line]) \
        == len(RESULTS["targets"]) + 1


def test_the_stream_rows_are_the_run_s():
    section = _section("Stream: plain pyzmq against zmqsec")
    for row in RESULTS["stream"]:
        name = "zmqsec+journal" if row["journal"] else "zmqsec"
        line = _line(section, f"| {_kib(row['payload_bytes'])} | {'on' if row['journal'] else 'off'} |")
        ratio = row["journal_ratio"] if row["journal"] else row["msgs_ratio"] if row["payload_bytes"] == 1024 \
            else row["mb_ratio"]
        assert f"| **{ratio:.2f}** |" in line, line
        assert f"{row['plain_msgs_per_s']:,.0f} ({row['plain_mb_per_s']:.1f})" in line, line
        assert f"{row['zmqsec_msgs_per_s']:,.0f} ({row['zmqsec_mb_per_s']:.1f})" in line, line
        assert f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} ms" in line, line
        assert f"{row['reader_peak_rss_mb']['plain']:.0f} / {row['reader_peak_rss_mb'][name]:.0f} MB" in line, line
        lost, text = sum(row["dropped"].values()), " ".join(section.split())
        if lost:  # a loss the run had is on the page, with its count
            assert f"{_kib(row['payload_bytes'])} with the journal {'on' if row['journal'] else 'off'}: {lost:,} " \
                   "messages not delivered" in text
        else:
            assert not any(row["zmqsec_reader_problems"].values())
        if not row["journal"]:
            profile = _line(section, f"| {_kib(row['payload_bytes'])} | {row['zmqsec_publish_cpu_us']:.1f} µs |")
            assert f"| {row['zmqsec_receive_cpu_us']:.1f} µs | {row['aes_gcm_us']:.1f} µs | {row['sha256_us']:.1f} µs |" \
                in profile, profile
    if not any(sum(row["dropped"].values()) for row in RESULTS["stream"]):
        assert "No message was dropped and no gap reported in any row." in section


def test_the_stream_verdicts_in_the_text_are_the_run_s():
    """The bullets under the stream table give each stream target's verdict as the run has it."""
    section = " ".join(_section("Stream: plain pyzmq against zmqsec").split())
    verdicts = {t["target"]: t["met"] for t in RESULTS["targets"]}
    for text, target in (("the stream-speed issue's 1.0, with records batched:",
                          "zmqsec records/s >= 1.0x plain pyzmq messages/s at 1 KiB"),
                         ("the stream-speed issue's 0.7:", "zmqsec >= 0.7x plain pyzmq MB/s at 64 KiB"),
                         ("target 256 MB:", "reader peak RSS <= 256 MB, flat-out 64 KiB")):
        assert f"{text} {_verdict(verdicts[target])}" in section, text
    rss = next(r for r in RESULTS["stream"] if r["payload_bytes"] == 65536 and not r["journal"])
    assert rss["zmqsec_reader_peak_rss_mb"] == rss["reader_peak_rss_mb"]["zmqsec"]


def test_the_replay_row_is_the_run_s():
    replay = RESULTS["replay"]
    line = _line(_section("Replay: a reader catching up after an outage"), f"| {replay['records']:,} |")
    assert f"**{replay['catch_up_records_per_s']:,.0f} records/s**" in line
    assert f"**{replay['catch_up_ratio']:.1f}×**" in line
    assert f"**{replay['time_to_live_s']:.1f} s**" in line
    assert f"{replay['spool_records_per_s']:,.0f} records/s" in line
    assert replay["exactly_once"] and replay["gaps"] == 0 and replay["unrecoverable"] == 0


def test_the_rekey_rows_are_the_run_s():
    section = _section("Rekey: revoking one reader")
    rows = {(r["readers"], r["mode"]): r for r in RESULTS["rekey"]}
    assert {n for n, _ in rows} == {10, 100, 1000, 10_000, 100_000}
    assert {m for _, m in rows} == {"single-envelope", "grouped", "tree"}
    for (readers, mode), row in rows.items():
        label = {"tree": "tree", "grouped": f"grouped ({row['group_size']})", "single-envelope": "single envelope"}[mode]
        line = _line(section, f"| {readers:,} | {label} |")
        assert f"| {row['rekey_s'] * 1000:.1f} ms | {row['switch_s'] * 1000:.1f} ms |" in line, line
        assert f"| {row['bytes_total']:,} | {row['bytes_per_reader']:,} |" in line, line
        assert row["revoked_reader_locked_out"]
    tree = rows[100_000, "tree"]
    assert tree["bytes_per_reader_of"] == "every remaining reader"
    assert f"registry reload after one removal {tree['registry_reload_s']:.2f} s" in section


def test_the_revocation_rows_are_the_run_s():
    section = _section("Revocation through the running publisher")
    assert len(RESULTS["revocation"]) == 3
    for row in RESULTS["revocation"]:
        label = "tree" if row["mode"] == "tree" else f"grouped ({row['group_size']})"
        line = _line(section, f"| {row['readers']:,} | {label} |")
        assert f"**{row['revocation_to_new_key_s']:.2f} s** ({min(row['samples']):.2f}–{max(row['samples']):.2f})" \
            in line, line
        assert f"**{row['crl_revocation_to_new_key_s']:.2f} s** ({min(row['crl_samples']):.2f}–" \
               f"{max(row['crl_samples']):.2f})" in line, line


def test_the_start_figures_are_the_run_s():
    start = RESULTS["start"]
    section = " ".join(_section("Start-up at 100,000 readers").split())
    assert start["readers"] == 100_000
    assert f"**{start['start_s']:.1f} s**" in section and f"**{start['peak_rss_mb']:.0f} MB**" in section
    assert f"{start['one_core_start_s']:.1f} s and {start['one_core_peak_rss_mb']:.0f} MB" in section
    assert f"**{start['tree_start_s']:.1f} s**" in section and f"**{start['tree_peak_rss_mb']:.0f} MB**" in section
    assert f"{start['tree_readers']:,} readers" in section and f"groups of {start['group_size']}" in section


def test_the_bridge_rows_are_the_run_s():
    section = _section("Bridge: EMI messages into ActiveMQ with receipts")
    for row in RESULTS["bridge"]:
        line = _line(section, f"| {row['direction']} | {_kib(row['body_bytes'])} | {row['mode']} |")
        assert f"**{row['zmqsec_msgs_per_s']:,.1f}**" in line and f"**{row['ratio']:.2f}**" in line, line
        assert f"| {row['openssl_cli_msgs_per_s']:,.1f} |" in line, line
        if row["direction"] == "out":
            assert f"| {row['broker_msgs_per_s']:,.1f} |" in line, line
    for row in RESULTS["bridge_steady"]:
        assert f"{row['mode']}: at most {row['max_backlog']} messages" in section


def test_the_memory_rows_are_the_run_s():
    memory, section = RESULTS["memory"], _section("Memory")
    assert memory["publisher_readers"] == 10_000
    assert f"| {memory['publisher_10k_readers_rss_mb']:.1f} MB ({memory['publisher_rss_after_start_mb']:.1f} MB right " \
           "after start-up) |" in section
    assert f"| {memory['plain_publisher_rss_mb']:.1f} MB |" in section
    assert f"| {memory['reader_rss_mb']:.1f} MB |" in section and f"| {memory['plain_reader_rss_mb']:.1f} MB |" in section
    assert f"**{memory['publisher_setup_s']:.1f} s**" in section


def test_the_variation_is_the_run_s():
    section = " ".join(_section("Variation between runs").split())
    for row in RESULTS["stream"]:
        if row["journal"]:
            continue
        plain, ours = row["plain_msgs_per_s_samples"], row["zmqsec_msgs_per_s_samples"]
        assert f"{_kib(row['payload_bytes'])} stream: plain pyzmq {min(plain):,.0f}–{max(plain):,.0f} msg/s, zmqsec " \
               f"{min(ours):,.0f}–{max(ours):,.0f} msg/s" in section


def test_the_protocol_quotes_the_run_s_bytes_per_reader_in_tree_mode():
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text()
    tree = next(r for r in RESULTS["rekey"] if r["readers"] == 100_000 and r["mode"] == "tree")
    assert f"({tree['bytes_per_reader']:,} bytes at 100,000 readers in\n`bench/results.json`" in protocol


def test_the_bridge_verdicts_in_the_text_are_the_run_s():
    section = " ".join(_section("Bridge: EMI messages into ActiveMQ with receipts").split())
    verdicts = {t["target"]: t["met"] for t in RESULTS["targets"]}
    ratio = {(d, m, size): verdicts[f"bridge {d} >= 20x openssl per message ({size} B, {m})"]
             for d in ("in", "out") for m in ("sign", "sign+encrypt") for size in (1024, 65536)}
    assert ratio["in", "sign", 1024] == ratio["in", "sign+encrypt", 1024]
    assert ratio["out", "sign", 1024] == ratio["out", "sign+encrypt", 1024]
    assert f"20 times SSM's way: {_verdict(ratio['in', 'sign', 1024])} in" in section
    assert f"{_verdict(ratio['out', 'sign', 1024])} out" in section
    if "costs both sides alike, **missed** in both directions" in section:
        assert not any(met for (_, _, size), met in ratio.items() if size == 65536)
    assert "1,000 msg/s signed: " in section and "600 msg/s signed and encrypted: " in section
    for d in ("out", "in"):
        rate = verdicts[f"bridge {d} >= 1000 msg/s (1024 B, sign)"], verdicts[f"bridge {d} >= 600 msg/s (1024 B, sign+encrypt)"]
        assert f"{_verdict(rate[0])} {d}" in section and f"{_verdict(rate[1])} {d}" in section


def test_the_readme_quotes_the_run_s_grouped_revocation_at_10000_readers():
    readme = " ".join((ROOT / "README.md").read_text().split())
    grouped = next(r for r in RESULTS["rekey"] if r["readers"] == 10_000 and r["mode"] == "grouped")
    assert f"Revoking one of 10,000 readers (groups of {grouped['group_size']}) then sends the members of its group " \
           f"{grouped['bytes_per_reader'] / 1000:.0f} kB" in readme
    assert f"every other reader an {grouped['bytes_per_reader_min'] / 1000:.0f} kB epoch announcement" in readme
