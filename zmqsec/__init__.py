"""zmqsec: accounting streams encrypted once, readable only by authorized certificates.

The public API, loaded on first use so that the pure layers (``zmqsec.protocol``,
``zmqsec.crypto``, ``zmqsec.machines``) import without pyzmq::

    from zmqsec import Publisher, Subscriber, AsyncSubscriber, Relay, RotationPolicy

See docs/PROTOCOL.md for the wire format, docs/architecture.md for the layers
and README.md for the commands.
"""

from __future__ import annotations

import importlib

from zmqsec.errors import ZmqsecError

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "Publisher": "zmqsec.drivers.publisher",
    "Subscriber": "zmqsec.drivers.subscriber",
    "AsyncSubscriber": "zmqsec.drivers.subscriber",
    "Relay": "zmqsec.drivers.relay",
    "IncomingSpool": "zmqsec.drivers.spool",
    "OutgoingSpool": "zmqsec.drivers.spool",
    "RotationPolicy": "zmqsec.machines.sender",
    "ReceiverPolicy": "zmqsec.machines.receiver",
    "Delivered": "zmqsec.machines.receiver",
    "Gap": "zmqsec.machines.receiver",
    "Rejected": "zmqsec.machines.receiver",
    "Restarted": "zmqsec.machines.receiver",
}

__all__ = ["ZmqsecError", "__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqsec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
