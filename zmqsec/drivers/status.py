"""What every long-running zmqsec command shares: a clean stop on SIGTERM/SIGINT and a status file.

One schema for every daemon's status file (JSON, replaced atomically)::

    {"role": "publisher" | "subscriber" | "relay" | "stomp-out" | "stomp-in",
     "stream": <stream name or null>, "pid": <process id>, "updated": <UTC time, ISO 8601>,
     "rejected": {<reason>: <count>, ...},   # refusals by RejectReason name (scoped: "publisher-revoked")
     ... the role's own figures (see docs/deploy/README.md)}

A status file that cannot be written is logged (once per distinct error) and the
daemon goes on: monitoring is worth less than the records.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from zmqsec.files import atomic_write

log = logging.getLogger("zmqsec.status")


class Stop:
    """SIGTERM/SIGINT set a flag; loops finish the message in hand and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_) -> None:
        self.requested = True


def utc_stamp() -> str:
    """Now, as the status files write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rejections(counters: Mapping[str, int]) -> dict[str, int]:
    """The ``rejected:<reason>`` counters as ``{reason: count}``."""
    return {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:")}


class StatusFile:
    """A daemon's status file: written every ``interval`` seconds and at exit."""

    def __init__(self, path: str | os.PathLike | None, role: str, *, stream: str | None = None,
                 interval: float = 10.0, clock=time.monotonic) -> None:
        self.path = Path(path) if path else None
        self.role, self.stream, self.interval, self._clock = role, stream, interval, clock
        self._next = 0.0
        self._failed: str | None = None

    def due(self) -> bool:
        """Is it time for the next write?"""
        return self._clock() >= self._next

    def document(self, fields: Mapping) -> dict:
        """The status document: the common fields, then the role's own."""
        return {"role": self.role, "stream": self.stream, "pid": os.getpid(), "updated": utc_stamp(),
                "rejected": {}, **fields}

    def write(self, fields: Mapping) -> dict:
        """Write the status now (also when not due); returns the document written."""
        self._next = self._clock() + self.interval
        document = self.document(fields)
        if self.path is None:
            return document
        try:
            atomic_write(self.path, json.dumps(document, indent=2, sort_keys=True).encode(), durable=False)
        except OSError as exc:
            if exc.strerror != self._failed:
                log.error("status file %s cannot be written (%s); carrying on without it", self.path, exc.strerror)
                self._failed = exc.strerror
        else:
            if self._failed is not None:
                log.info("status file %s written again", self.path)
                self._failed = None
        return document
