"""Refusals are counted, not shouted: one log line per reason per interval (docs/PROTOCOL.md §9).

A flood of junk from a stranger or a malicious relay must not turn into a flood
of log lines (one WARNING per frame once filled a disk at 5 MB/s).  The first
refusal of a reason is logged at once, with its detail; the rest of that
interval only counts, and the next line says how many there were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

INTERVAL = 10.0  # seconds between two lines for one reason


@dataclass(slots=True)
class _Tally:
    until: float  # the end of the interval in which this reason was last logged
    count: int = 0  # refusals since then, not logged
    detail: str = ""  # the last of them


class RefusalLog:
    """Logs refusals by reason, at most one line per reason and ``interval``."""

    def __init__(self, logger: logging.Logger, what: str, *, interval: float = INTERVAL, level: int = logging.WARNING,
                 clock=time.monotonic) -> None:
        self.log, self.what, self.interval, self.level, self._clock = logger, what, interval, level, clock
        self._tallies: dict[str, _Tally] = {}

    def refused(self, reason: str, detail: str, count: int = 1) -> None:
        """``count`` refusals (``detail`` about the last): logged now if the reason was quiet for an interval,
        else counted for the next line."""
        now = self._clock()
        tally = self._tallies.get(reason)
        if tally is None or now >= tally.until:
            self._summary(reason, tally)
            self._tallies[reason] = tally = _Tally(now + self.interval)
            self.log.log(self.level, "%s: rejected [%s] %s", self.what, reason,
                         detail if count == 1 else f"{detail} (and {count - 1} more)")
        else:
            tally.count += count
            tally.detail = detail

    def flush(self) -> None:
        """Log what was counted and not yet logged, for every reason whose interval is over (call now and then)."""
        now = self._clock()
        for reason, tally in list(self._tallies.items()):
            if now >= tally.until:
                self._summary(reason, tally)
                del self._tallies[reason]

    def _summary(self, reason: str, tally: _Tally | None) -> None:
        if tally is not None and tally.count:
            self.log.log(self.level, "%s: rejected [%s] %d more time(s) since the last line (the last: %s)", self.what,
                         reason, tally.count, tally.detail)
