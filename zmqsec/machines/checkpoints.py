"""The publisher's checkpoints (docs/PROTOCOL.md §5): digests of the frames sent, signed in runs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from zmqsec.protocol.checkpoint import sign_checkpoint
from zmqsec.protocol.frames import Checkpoint


SIGNING_SHARE = 0.2  # checkpoints go out no more often than keeps their signing under this share of one core


class Checkpointer:
    """Collects the digests of data frames since the last checkpoint and signs them when due.

    A checkpoint is due once frames wait and ``min_interval`` has passed since the last one -- and at least five
    times what a signature costs here (measured, so that signing takes at most :data:`SIGNING_SHARE` of a core) --
    or when the oldest frame has waited ``interval``, or ``maximum`` frames wait.  A frame is delivered when its
    checkpoint arrives, so the first rule sets the latency while the publisher is busy or slow to sign, the
    others bound it.
    """

    def __init__(self, stream: bytes, stream_id: bytes, key, interval: float, maximum: int,
                 min_interval: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream, self.stream_id, self._key = stream, stream_id, key
        self.interval, self.maximum, self.min_interval, self._clock = interval, maximum, min_interval, clock
        self._digests: list[bytes] = []
        self._first_seq = 1
        self._first_at = 0.0
        self._last_at = -math.inf  # when the last checkpoint was signed
        self.cost = 0.0  # seconds one signature takes, a moving average

    def add(self, seq: int, digest: bytes, now: float) -> bool:
        """Record a sent frame's digest; True when the run is full and must be signed now."""
        if not self._digests:
            self._first_seq, self._first_at = seq, now
        self._digests.append(digest)
        return len(self._digests) >= self.maximum

    @property
    def gap(self) -> float:
        """The least time between two checkpoints: ``min_interval``, or more when signing is slow."""
        return min(self.interval, max(self.min_interval, self.cost / SIGNING_SHARE))

    def due(self, now: float) -> bool:
        """Should the waiting frames be signed now?"""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    @property
    def deadline(self) -> float | None:
        """When the pending run must be signed, or None with nothing pending."""
        if not self._digests:
            return None
        return min(self._first_at + self.interval, max(self._first_at, self._last_at + self.gap))

    def sign(self, now: float) -> Checkpoint | None:
        """The checkpoint over every pending digest (None if there is none)."""
        if not self._digests:
            return None
        started = self._clock()
        checkpoint = sign_checkpoint(self.stream, self.stream_id, self._first_seq, b"".join(self._digests), self._key)
        took = self._clock() - started
        self.cost = took if self.cost == 0.0 else 0.8 * self.cost + 0.2 * took
        self._last_at = now
        self._digests.clear()
        return checkpoint
