"""The bench's small statistics: medians, nearest-rank percentiles, a process's resident set, a directory's size."""

from __future__ import annotations

import resource
import statistics
from pathlib import Path


def median(values) -> float:
    """The median of ``values`` as a float (0.0 when there are none)."""
    values = list(values)
    return float(statistics.median(values)) if values else 0.0


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


def rss() -> dict:
    """Peak and current resident set of this process, in MB (10^6 bytes)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[{"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb"}[name]] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return out


def disk_bytes(directory: Path) -> int:
    """Bytes of the files under ``directory`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0
