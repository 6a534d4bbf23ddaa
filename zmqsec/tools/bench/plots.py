"""PNG figures of a run's results for docs/performance.md.

matplotlib is an optional dependency (``pip install 'zmqsec[tools]'``) and is imported here only,
when a figure is drawn: without it a run still writes its results, just no plots.
"""

from __future__ import annotations

from pathlib import Path

from .config import GROUPED, SINGLE, TREE, BenchError

INSTALL = "pip install 'zmqsec[tools]'"


class PlotsUnavailable(BenchError):
    """matplotlib cannot be imported, so no plots can be drawn (the results themselves are unaffected)."""


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotsUnavailable(f"plots skipped: matplotlib is not available ({exc}); {INSTALL} installs it") from None
    return plt


def unavailable() -> str | None:
    """Why plots cannot be drawn here, in one line that names the fix; None when they can."""
    try:
        _pyplot()
    except PlotsUnavailable as exc:
        return str(exc)
    return None


def write_plots(results: dict, directory: Path) -> list[Path]:
    """PNG figures for docs/performance.md, one per section present in ``results``; the paths written.

    Raises :class:`PlotsUnavailable` when matplotlib cannot be imported."""
    plt = _pyplot()
    label = f"({results['profile']} profile, {results['machine']['cpus']} CPUs)"
    written = []
    for section, name, draw in (("stream", "stream.png", _stream), ("replay", "replay.png", _replay),
                                ("rekey", "rekey.png", _rekey),
                                ("bridge", "bridge.png", _bridge), ("memory", "memory.png", _memory)):
        if results.get(section):
            fig = draw(plt, results[section], label)
            path = directory / name
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def _stream(plt, rows: list[dict], label: str):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    off = [r for r in rows if not r.get("journal")]
    on = {r["payload_bytes"]: r for r in rows if r.get("journal")}
    names = [f"{r['payload_bytes'] // 1024} KiB" for r in off]
    x = range(len(off))
    for ax, key, unit in ((axes[0], "msgs_per_s", "messages/s"), (axes[1], "mb_per_s", "MB/s")):
        ax.bar([i - 0.27 for i in x], [r[f"plain_{key}"] for r in off], 0.27, label="plain pyzmq")
        ax.bar(list(x), [r[f"zmqsec_{key}"] for r in off], 0.27, label="zmqsec")
        ax.bar([i + 0.27 for i in x], [on[r["payload_bytes"]][f"zmqsec_{key}"] if r["payload_bytes"] in on else 0
                                       for r in off], 0.27, label="zmqsec, journal on")
        for i, r in zip(x, off):
            ax.annotate(f"{r['msgs_ratio']:.0%}", (i, r[f"zmqsec_{key}"]), ha="center", va="bottom")
            if r["payload_bytes"] in on:
                j = on[r["payload_bytes"]]
                ax.annotate(f"{j['msgs_ratio']:.0%}", (i + 0.27, j[f"zmqsec_{key}"]), ha="center", va="bottom")
        ax.set_xticks(list(x), names)
        ax.set_ylabel(unit)
        ax.set_title(f"throughput, {unit} (% of plain)")
        ax.legend(fontsize=8)
    ax = axes[2]
    bars = [("plain p50", "plain_p50_ms", off), ("plain p99", "plain_p99_ms", off), ("zmqsec p50", "p50_ms", off),
            ("zmqsec p99", "p99_ms", off)]
    if on:
        bars += [("journal on p50", "p50_ms", None), ("journal on p99", "p99_ms", None)]
    width = 0.8 / len(bars)
    for k, (name, key, source) in enumerate(bars):
        values = [(r if source is not None else on.get(r["payload_bytes"], {})).get(key, 0) for r in off]
        ax.bar([i - 0.4 + width * (k + 0.5) for i in x], values, width, label=name)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms, publish to verified delivery")
    ax.set_title(f"latency at {off[0]['latency_rate_per_s']} msg/s")
    ax.legend(fontsize=7)
    fig.suptitle(f"stream over tcp loopback {label}")
    return fig


def _replay(plt, replay: dict, label: str):
    fig, ax = plt.subplots(figsize=(8, 4.4))
    t = [p[0] for p in replay["progress"]]
    ax.plot(t, [p[2] for p in replay["progress"]], label="records published (live stream)", color="tab:gray")
    ax.plot(t, [p[1] for p in replay["progress"]], label="records stored by the restarted reader", color="tab:blue")
    ax.axvline(replay["time_to_live_s"], linestyle=":", color="tab:green",
               label=f"live again after {replay['time_to_live_s']:.1f} s")
    ax.set_xlabel("seconds after the restart")
    ax.set_ylabel("sequence number")
    ax.set_title(f"{replay['records']} records missed in a {replay['outage_s']:.0f} s outage: replayed at "
                 f"{replay['catch_up_records_per_s']:.0f}/s ({replay['catch_up_ratio']:.1f}x live)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"reader catch-up from the publisher's journal {label}")
    return fig


def _rekey(plt, rows: list[dict], label: str):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for mode, color, marker in ((SINGLE, "tab:blue", "o"), (GROUPED, "tab:orange", "s"), (TREE, "tab:green", "^")):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        n = [r["readers"] for r in mine]
        axes[0].plot(n, [r["rekey_s"] for r in mine], marker=marker, color=color, label=f"{mode}: new key at the publisher")
        axes[0].plot(n, [r["switch_s"] for r in mine], marker=marker, color=color, linestyle="--",
                     label=f"{mode}: sampled readers hold it")
        axes[1].plot(n, [r["bytes_total"] for r in mine], marker=marker, color=color, label=f"{mode}: all bytes sent")
        axes[1].plot(n, [r["bytes_per_reader"] for r in mine], marker=marker, color=color, linestyle="--",
                     label=f"{mode}: most a reader receives")
        if mode == GROUPED:
            axes[1].plot(n, [r["bytes_per_reader_min"] for r in mine], marker=marker, color=color, linestyle=":",
                         label=f"{mode}: a reader in another group")
    axes[0].axhline(1.0, color="grey", linestyle=":", label="target: 1 s (for 10,000 readers)")
    axes[1].axhline(4096, color="grey", linestyle=":", label="target: 4 KB a reader (tree, 100,000 readers)")
    for ax, unit in ((axes[0], "seconds"), (axes[1], "bytes")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("authorized readers")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    axes[0].set_title("revoking one reader: time")
    axes[1].set_title("revoking one reader: key announcement bytes")
    fig.suptitle(f"rekey {label}")
    return fig


def _bridge(plt, rows: list[dict], label: str):
    rows = [r for r in rows if r.get("direction", "out") == "out"]
    fig, ax = plt.subplots(figsize=(10, 4.4))
    names = [f"{r['body_bytes'] // 1024} KiB\n{r['mode']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["openssl_cli_msgs_per_s"] for r in rows], 0.27,
           label="openssl CLI per message, one receipt at a time (APEL SSM)")
    ax.bar(list(x), [r["zmqsec_msgs_per_s"] for r in rows], 0.27, label="zmqsec bridge (durable outbox, a receipted transaction per window)")
    ax.bar([i + 0.27 for i in x], [r["zmqsec_without_outbox_msgs_per_s"] for r in rows], 0.27,
           label="zmqsec signing and sending, without the outbox")
    for i, r in zip(x, rows):
        ax.annotate(f"x{r['ratio']:.1f}", (i, r["zmqsec_msgs_per_s"]), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"x{r['ratio_without_outbox']:.1f}", (i + 0.27, r["zmqsec_without_outbox_msgs_per_s"]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("messages/s into ActiveMQ, receipted")
    ax.set_title(f"EMI S/MIME into ActiveMQ (target: 20x the openssl CLI) {label}")
    ax.legend(fontsize=8)
    return fig


def _memory(plt, m: dict, label: str):
    fig, ax = plt.subplots(figsize=(8, 3.8))
    mode = f"{m['publisher_mode']}" + (f", groups of ~{m['group_size']}" if m.get("group_size") else "")
    bars = {f"zmqsec publisher\n{m['publisher_readers']} readers\n({mode})": m["publisher_10k_readers_rss_mb"],
            "plain pyzmq\npublisher": m["plain_publisher_rss_mb"],
            "zmqsec reader": m["reader_rss_mb"], "plain pyzmq\nreader": m["plain_reader_rss_mb"]}
    ax.bar(list(bars), list(bars.values()), color=["tab:orange", "tab:blue", "tab:orange", "tab:blue"])
    for i, v in enumerate(bars.values()):
        ax.annotate(f"{v:.0f} MB", (i, v), ha="center", va="bottom")
    ax.set_ylabel("peak RSS, MB")
    ax.set_title(f"memory, {m['reader_messages']} messages of 1 KiB {label}", fontsize=10)
    return fig
