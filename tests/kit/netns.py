"""Running a driver script inside a fresh network namespace (``unshare -n``), where multicast on loopback
is ours to configure and no other test's traffic can reach it."""

from __future__ import annotations

import shutil
import subprocess
import sys

from kit.paths import KIT

AVAILABLE = shutil.which("unshare") is not None
WHY_NOT = "unshare (util-linux) creates the test's network namespace"


def run_driver(script: str, *args, timeout: float) -> subprocess.CompletedProcess:
    """Run ``kit/<script>`` with this Python inside a new network namespace; its output captured as text."""
    return subprocess.run(["unshare", "-n", sys.executable, str(KIT / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def loopback_multicast() -> None:
    """Inside the namespace: bring loopback up, with multicast, and route the multicast range over it."""
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(cmd, check=True)
