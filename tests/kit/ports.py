"""Free TCP ports on loopback, for daemons and brokers to bind."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on now (the kernel's pick; free until someone binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_endpoint(host: str = HOST) -> str:
    """A ``tcp://`` endpoint on a free port, for a daemon to bind."""
    return f"tcp://{host}:{free_port(host)}"
