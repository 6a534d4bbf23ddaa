"""Free TCP ports on loopback, for daemons and brokers to bind.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``, 32768 and up here): a port
the kernel picked and let go of could become the local port of any outgoing connection before the daemon
binds it, and the tests open thousands (strangers connect again and again).  Each pytest-xdist worker takes
its own band, and a process never hands out a port twice.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

HOST = "127.0.0.1"
FIRST, BAND, BANDS = 16000, 4000, 4  # 16000-31999: four bands of 4,000 ports


def _candidates():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    band = FIRST + (int(worker) % BANDS if worker.isdigit() else 0) * BAND
    start = random.randrange(BAND)
    return itertools.cycle([band + (start + i) % BAND for i in range(BAND)])


_next = _candidates()
_given: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on now, from this worker's band, not handed out before by
    this process (free until someone binds it)."""
    for _ in range(BAND):
        port = next(_next)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port left in this worker's band of {BAND}")


def tcp_endpoint(host: str = HOST) -> str:
    """A ``tcp://`` endpoint on a free port, for a daemon to bind."""
    return f"tcp://{host}:{free_port(host)}"
