"""The bridge's durable outbox: S/MIME bodies waiting for the broker's RECEIPT.

A dirq ``Queue`` (body, empa-id).  ``add`` returns only after the element's
files and directory are fsync'ed, so a message the bridge has taken from the
stream survives kill -9 and power loss; ``remove`` happens only after the
broker's receipt.  One bridge owns an outbox (an exclusive lock says so), which
lets it reclaim the elements a crashed predecessor had locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dirq.queue import Queue

from zmqsec.errors import ZmqsecError
from zmqsec.files import fsync_tree, sync_filesystem

SCHEMA = {"body": "binary", "empaid": "string"}
REJECT_SCHEMA = {"body": "binary", "empaid": "string", "error": "string"}


class OutboxError(ZmqsecError):
    """The outbox directory cannot be used (or another bridge holds it)."""


class Outbox:
    """One bridge's outbox; opening it takes the exclusive lock or raises :class:`OutboxError`.

    ``fsync=False`` skips the fsync in :meth:`add`, giving up durability across power loss.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # Beside the queue, not in it: dirq counts what its directory holds.
            self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot use outbox ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutboxError(f"{self.path}: another bridge is using this outbox; give each bridge its own") from None
        self.queue = Queue(str(self.path), schema=SCHEMA)
        # We own the outbox now: anything half-written or still locked belonged to a dead predecessor.  A
        # half-written element was never taken (the position is saved after the add), so it goes; dirq's own
        # purge cannot do this (it rmdirs every temporary element, young or old, without emptying the young).
        _remove_volatile(self.path)
        self.queue.purge(maxtemp=0, maxlock=1)
        for name in list(self.queue):
            self.queue.unlock(name, permissive=True)

    def add(self, body: bytes, empaid: str, *, durable: bool = True) -> str:
        """Store one S/MIME body with its empa-id; returns the element name (after the fsync, unless that is off).
        ``durable=False``: not synced yet; call :meth:`sync` once for a batch (group commit) before anything
        counts the batch as taken."""
        name = self.queue.add({"body": body, "empaid": empaid})
        if self.fsync and durable:
            fsync_tree(self.path, name)
        return name

    def sync(self) -> None:
        """Make every element added so far durable: one sync of the outbox's filesystem for a whole batch."""
        if self.fsync:
            sync_filesystem(self.path)

    def pending(self, limit: int) -> list[str]:
        """The names of up to ``limit`` elements not yet receipted (whether sent or not), in queue order."""
        names = []
        for name in self.queue:
            names.append(name)
            if len(names) >= limit:
                break
        return names

    def get(self, name: str) -> tuple[bytes, str]:
        """An element's body and empa-id; locks it, as :meth:`remove` needs (an element we already locked is fine)."""
        self.queue.lock(name, permissive=True)
        element = self.queue.get(name)
        return element["body"], element["empaid"]

    def remove(self, name: str) -> None:
        """Delete an element the broker has receipted; it must have been read with :meth:`get` first."""
        self.queue.remove(name)

    def message_ids(self) -> list[str]:
        """The ``empa-id`` of every message waiting (to recognise, after a crash, what was taken already)."""
        out = []
        for name in self.queue:
            try:
                out.append((self.path / name / "empaid").read_text())
            except OSError:
                continue  # receipted and removed meanwhile
        return out

    def count(self) -> int:
        """How many elements wait for a receipt (walks the queue directory)."""
        return sum(1 for _ in self.queue)

    def close(self) -> None:
        """Release the exclusive lock, so another bridge may open the outbox."""
        self._lock.close()


class LocalRejects:
    """Stream messages the bridge must not send (no receiver could store them), kept with the reason: a dirq
    ``Queue`` (body, empa-id, error), fsync'ed before the message counts as taken, so nothing is lost."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.queue = Queue(str(self.path), schema=REJECT_SCHEMA)

    def add(self, body: bytes, empaid: str, error: str) -> str:
        """Keep one message and why; returns the element name, after the fsync."""
        name = self.queue.add({"body": body, "empaid": empaid, "error": error})
        fsync_tree(self.path, name)
        return name


def _remove_volatile(path: Path) -> None:
    """Remove the temporary and obsolete elements of the dirq queue at ``path`` (its owner is dead)."""
    for volatile in ("temporary", "obsolete"):
        for element in (path / volatile).glob("*") if (path / volatile).is_dir() else ():
            for member in sorted(element.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                member.rmdir() if member.is_dir() else member.unlink()
            element.rmdir()
