"""What every long-running zmqsec command shares: a clean stop on SIGTERM/SIGINT and a status file."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


class Stop:
    """SIGTERM/SIGINT set a flag; loops finish the message in hand and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_) -> None:
        self.requested = True


def utc_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_status(path: Path | None, status: dict) -> None:
    """Replace the JSON status file atomically (readers never see half a file)."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True))
    os.replace(tmp, path)
