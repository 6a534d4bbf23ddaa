"""Which ZeroMQ transports this libzmq has, said clearly before a bind or connect fails obscurely."""

from __future__ import annotations

import logging

import zmq

from zmqsec.errors import ZmqsecError

log = logging.getLogger("zmqsec.transport")

# scheme -> the zmq.has() capability it needs (None: always there)
_NEEDS = {"tcp": None, "ipc": "ipc", "inproc": None, "epgm": "pgm", "pgm": "pgm", "norm": "norm", "ws": "draft", "udp": "draft"}


MULTICAST = ("epgm", "pgm", "norm")
DEFAULT_MULTICAST_RATE = 10_000  # kbit/s; libzmq's own default (100) starves a stream with key announcements


class TransportUnavailable(ZmqsecError):
    """The endpoint's transport is not compiled into the libzmq pyzmq is linked against."""


def check_endpoint(endpoint: str) -> str:
    """The endpoint's scheme, or :class:`TransportUnavailable` saying why this libzmq cannot use it."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise TransportUnavailable(f"endpoint {endpoint!r} is not SCHEME://ADDRESS (e.g. tcp://127.0.0.1:5556)")
    if scheme not in _NEEDS:
        raise TransportUnavailable(f"endpoint {endpoint!r}: unknown transport {scheme!r} (use {', '.join(_NEEDS)})")
    if scheme == "norm" and zmq.zmq_version_info() <= (4, 3, 4):
        log.warning("endpoint %s: libzmq %s's NORM engine drops messages over 1400 bytes, and zmqsec's key "
                    "announcements are larger; use epgm:// for multicast", endpoint, zmq.zmq_version())
    need = _NEEDS[scheme]
    if need is not None and not zmq.has(need):
        raise TransportUnavailable(
            f"endpoint {endpoint!r}: libzmq {zmq.zmq_version()} was built without {scheme}; "
            "rebuild pyzmq against Debian's libzmq (./run setup does: pip install --no-binary pyzmq pyzmq)")
    return scheme


class EndpointError(ZmqsecError):
    """An endpoint could not be bound or connected (a port in use, a missing directory, no permission)."""


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """Check the endpoint, then bind; libzmq's refusal becomes one line naming the endpoint."""
    check_endpoint(endpoint)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot bind {endpoint}: {exc.strerror} (another process on it? a missing directory?)") from None


def connect(socket: zmq.Socket, endpoint: str) -> None:
    """Check the endpoint, then connect (libzmq connects in the background and retries)."""
    check_endpoint(endpoint)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot connect to {endpoint}: {exc.strerror}") from None
