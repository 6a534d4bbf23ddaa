"""A private ActiveMQ for the bridge section when the run is given none."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from zmqsec.tools.activemq import BrokerConfig, LocalBroker

log = logging.getLogger("zmqsec.bench")


class PrivateBroker:
    """A broker of our own on free loopback ports, in the run's work directory, stopped afterwards."""

    def __init__(self, directory: Path) -> None:
        ports = [_free_port() for _ in range(2)]
        self.broker = LocalBroker(BrokerConfig(base=directory, openwire_port=ports[0], stomp_ports=(ports[1],)))
        self.host, self.port = "127.0.0.1", ports[1]

    def __enter__(self) -> "PrivateBroker":
        directory = self.broker.config.base
        directory.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.broker.start()
        log.info("bridge: private ActiveMQ on %s:%d (started in %.1f s)", self.host, self.port, time.perf_counter() - t0)
        return self

    def __exit__(self, *exc) -> None:
        self.broker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
