"""The publisher's checkpoints (docs/PROTOCOL.md §5): digests of the frames sent, signed in runs."""

from __future__ import annotations

from zmqsec.protocol.checkpoint import sign_checkpoint
from zmqsec.protocol.frames import Checkpoint


class Checkpointer:
    """Collects the digests of data frames since the last checkpoint and signs them when due."""

    def __init__(self, stream: bytes, stream_id: bytes, key, interval: float, maximum: int) -> None:
        self.stream, self.stream_id, self._key = stream, stream_id, key
        self.interval, self.maximum = interval, maximum
        self._digests: list[bytes] = []
        self._first_seq = 1
        self._first_at = 0.0

    def add(self, seq: int, digest: bytes, now: float) -> bool:
        """Record a sent frame's digest; True when the run is full and must be signed now."""
        if not self._digests:
            self._first_seq, self._first_at = seq, now
        self._digests.append(digest)
        return len(self._digests) >= self.maximum

    def due(self, now: float) -> bool:
        """Has the oldest unsigned frame waited ``interval``?"""
        return bool(self._digests) and now - self._first_at >= self.interval

    @property
    def deadline(self) -> float | None:
        """When the pending run must be signed, or None with nothing pending."""
        return self._first_at + self.interval if self._digests else None

    def sign(self) -> Checkpoint | None:
        """The checkpoint over every pending digest (None if there is none)."""
        if not self._digests:
            return None
        checkpoint = sign_checkpoint(self.stream, self.stream_id, self._first_seq, b"".join(self._digests), self._key)
        self._digests.clear()
        return checkpoint
