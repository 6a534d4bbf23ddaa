"""A publisher's output and its journal in the order of docs/PROTOCOL.md §10.3.

Every frame goes on the socket at once and into the journal's batch; a
checkpoint goes out only once the batch holding it (and the spool items it
carries) is committed and synced.  Commits are grouped: at most one every
``COMMIT_EVERY`` seconds, unless the caller forces one (:meth:`Recorder.commit`,
at the end of a spool batch).  With ``background`` the commit (its fsync above
all) runs in a thread of its own while the publisher goes on encrypting and
sending; the checkpoints it releases still go out from the caller's thread,
the one that owns the socket.  With the disk full, checkpoints wait
(``blocked``) and the commit is retried; nothing is published meanwhile.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .journal import Entry, Journal, JournalError, JournalFull

log = logging.getLogger("zmqsec.journal")

POLL = 0.001  # seconds between looks at a background commit in flight, when idle (its checkpoints wait)


class Recorder:
    """Frames out and into the journal; checkpoints out once committed."""

    RETRY = 2.0  # seconds between commits of a batch the disk had no room for
    # Seconds between group commits: checkpoints due meanwhile wait for the next one (and only one commit runs at a
    # time, so a slow disk groups more).  A record's latency with the journal on is about this plus one commit.
    COMMIT_EVERY = 0.002
    # Frame bytes sent but not yet durable, at most: beyond it the publisher waits for the commit in flight.  Readers
    # hold those frames until their checkpoint comes, within a budget of their own (64 MiB by default), so a
    # publisher outrunning its journal must wait rather than push them over it.
    MAX_UNCOMMITTED = 16 << 20

    def __init__(self, send, journal: Journal | None, clock=time.monotonic, *, background: bool = False) -> None:
        self._send, self.journal, self._clock = send, journal, clock
        self._held: list[list[bytes]] = []  # checkpoints waiting for their commit, in order
        self._retry_at = 0.0  # while a commit fails (disk full): when to try again
        self._next_commit = 0.0
        self._pool = ThreadPoolExecutor(1, "zmqsec-journal") if background and journal is not None else None
        self._inflight: tuple[Future, tuple, int] | None = None  # (commit, its batch, checkpoints it covers)
        self._pending_bytes = 0  # frame bytes in the journal's batch
        self._inflight_bytes = 0  # and in the commit in flight
        self.waits = 0  # times the publisher waited for the journal to catch up

    @property
    def blocked(self) -> bool:
        """Is a commit failing (disk full)?  Then publish nothing more."""
        return self._retry_at != 0.0

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` must run next: a commit due, or one in flight to collect (None: nothing held)."""
        if self._inflight is not None:
            return self._clock() + POLL
        if not self._held:
            return None
        return self._retry_at or self._next_commit

    def data(self, parts: list[bytes], stream_id: bytes, seq: int, epoch: int, digest: bytes = b"") -> None:
        """A data frame (and its digest, if the sender has it): out now, into the batch."""
        self._send(parts)
        if self.journal is not None:
            self.journal.add(Entry(stream_id, "D", seq, seq, epoch, b"", b"", parts[0], parts[1], digest))
            self._pending_bytes += len(parts[1])

    def control(self, parts: list[bytes]) -> None:
        """An announcement, group announcement or run frame: out now, into the batch."""
        self._send(parts)
        if self.journal is not None:
            self.journal.add_parts(parts)

    def again(self, parts: list[bytes]) -> None:
        """A copy of a frame sent and journaled before: out now, unless checkpoints are held (it might be one)."""
        if not self._held:
            self._send(parts)

    def checkpoint(self, parts: list[bytes]) -> None:
        """A checkpoint: into the batch, committed (now or with the next group), then out."""
        if self.journal is None:
            self._send(parts)
            return
        self.journal.add_parts(parts)
        self._held.append(parts)
        self.tick()

    def tick(self) -> None:
        """Release what a finished background commit covers; start the group commit when it is due (or retry
        one the disk had no room for)."""
        if self._inflight is not None and self._inflight[0].done():
            self._collect()
        if self._held and self._inflight is None and self._clock() >= (self._retry_at or self._next_commit):
            self._start()

    @property
    def uncommitted(self) -> int:
        """Data frame bytes sent and not yet durable (batch and commit in flight)."""
        return self._pending_bytes + self._inflight_bytes

    def make_room(self) -> None:
        """Before a frame: while more than MAX_UNCOMMITTED bytes are not yet durable, wait for the commit in
        flight (and start the next).  The journal's pace is then the publisher's: nothing it sends waits
        longer for its checkpoint than a commit or two take."""
        if self.journal is None or self.uncommitted <= self.MAX_UNCOMMITTED or self.blocked:
            return
        self.waits += 1
        while self.uncommitted > self.MAX_UNCOMMITTED and not self.blocked:
            if self._inflight is not None:
                self._collect()  # waits for it
            elif self._pending_bytes:
                self._start()
            else:
                break

    def commit(self) -> bool:
        """Commit everything held now and wait for it; False (logged once) while the disk is full."""
        if self.journal is None:
            return True
        if self._inflight is not None:
            self._collect()  # waits for it
        if self._retry_at == 0.0 or self._clock() >= self._retry_at:
            self._start()
            if self._inflight is not None:
                self._collect()
        return not self.blocked

    def close(self) -> None:
        """Wait for a commit in flight and stop the committer thread."""
        if self._inflight is not None:
            self._collect()
        if self._pool is not None:
            self._pool.shutdown()

    def _start(self) -> None:
        batch, covered = self.journal.take(), len(self._held)
        self._inflight_bytes, self._pending_bytes = self._pending_bytes, 0
        if self._pool is None:
            future: Future = Future()
            try:
                self.journal.write(batch)
                future.set_result(None)
            except JournalError as exc:
                future.set_exception(exc)
        else:
            future = self._pool.submit(self.journal.write, batch, own_connection=True)
        self._inflight = (future, batch, covered)
        if self._pool is None:
            self._collect()

    def _collect(self) -> None:
        future, batch, covered = self._inflight
        self._inflight = None
        written, self._inflight_bytes = self._inflight_bytes, 0
        try:
            future.result()
        except JournalFull as exc:
            self.journal.restore(batch)
            self._pending_bytes += written
            if self._retry_at == 0.0:
                log.error("%s; publishing stops until space returns (the outgoing spool keeps the records)", exc)
            self._retry_at = self._clock() + self.RETRY
            return
        except JournalError:
            self.journal.restore(batch)
            self._pending_bytes += written
            raise
        if self._retry_at:
            log.info("journal %s: writing again; publishing resumes", self.journal.path)
            self._retry_at = 0.0
        self._next_commit = self._clock() + self.COMMIT_EVERY
        released, self._held = self._held[:covered], self._held[covered:]
        for parts in released:
            self._send(parts)
