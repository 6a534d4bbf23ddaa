"""The bridge's durable outbox: S/MIME bodies waiting for the broker's RECEIPT.

An SQLite database in WAL mode (``outbox.sqlite`` in the outbox directory),
one row per message (body, empa-id).  ``add`` returns only after the commit is
fsync'ed, so a message the bridge has taken from the stream survives kill -9
and power loss; a batch added with ``durable=False`` is committed, with one
fsync, by ``sync``.  Rows are deleted only after the broker's receipt, a
window at a time.  One bridge owns an outbox (an exclusive lock says so).

Earlier versions kept the outbox as a dirq queue in the same directory; its
elements are moved into the database when the outbox is opened, so nothing
taken before an upgrade is lost.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from dirq.queue import Queue

from zmqsec.errors import ZmqsecError
from zmqsec.files import fsync_tree

DATABASE = "outbox.sqlite"
SCHEMA = {"body": "binary", "empaid": "string"}  # the dirq queue of earlier versions
REJECT_SCHEMA = {"body": "binary", "empaid": "string", "error": "string"}


class OutboxError(ZmqsecError):
    """The outbox directory cannot be used (or another bridge holds it)."""


class Outbox:
    """One bridge's outbox; opening it takes the exclusive lock or raises :class:`OutboxError`.

    ``fsync=False`` commits without fsync, giving up durability across power loss (not across kill -9).
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot use outbox ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutboxError(f"{self.path}: another bridge is using this outbox; give each bridge its own") from None
        try:
            self._db = sqlite3.connect(self.path / DATABASE, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'OFF'}")
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, empaid TEXT NOT NULL, "
                             "body BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path / DATABASE}: cannot open the outbox database ({exc})") from None
        self._open = False  # a transaction of adds not yet synced
        self._adopt_dirq()

    def _adopt_dirq(self) -> None:
        """Move the elements of an earlier version's dirq outbox into the database (committed, then removed)."""
        if not any(p.is_dir() and len(p.name) == 8 for p in self.path.iterdir()):
            return
        _remove_volatile(self.path)
        queue = Queue(str(self.path), schema=SCHEMA)
        queue.purge(maxtemp=0, maxlock=1)
        names = list(queue)
        for name in names:
            queue.unlock(name, permissive=True)
            queue.lock(name, permissive=True)
            element = queue.get(name)
            self.add(element["body"], element["empaid"], durable=False)
        self.sync()
        for name in names:
            queue.remove(name)

    def _write(self, sql: str, args) -> sqlite3.Cursor:
        if not self._open:
            self._db.execute("BEGIN IMMEDIATE")
            self._open = True
        return self._db.execute(sql, args)

    def add(self, body: bytes, empaid: str, *, durable: bool = True) -> str:
        """Store one S/MIME body with its empa-id; returns the element name (after the fsync'ed commit).
        ``durable=False``: not committed yet; call :meth:`sync` once for a batch (group commit) before anything
        counts the batch as taken."""
        name = str(self._write("INSERT INTO outbox (empaid, body) VALUES (?, ?)", (empaid, body)).lastrowid)
        if durable:
            self.sync()
        return name

    def sync(self) -> None:
        """Commit every element added so far: one fsync for a whole batch."""
        if self._open:
            self._db.execute("COMMIT")
            self._open = False

    def pending(self, limit: int) -> list[str]:
        """The names of up to ``limit`` elements not yet receipted (whether sent or not), oldest first."""
        return [str(r[0]) for r in self._db.execute("SELECT id FROM outbox ORDER BY id LIMIT ?", (limit,))]

    def get(self, name: str) -> tuple[bytes, str]:
        """An element's body and empa-id."""
        row = self._db.execute("SELECT body, empaid FROM outbox WHERE id = ?", (int(name),)).fetchone()
        if row is None:
            raise OutboxError(f"{self.path}: no element {name}")
        return row[0], row[1]

    def remove(self, *names: str) -> None:
        """Delete elements the broker has receipted, in one commit."""
        if names:
            self._write("DELETE FROM outbox WHERE id IN (%s)" % ",".join("?" * len(names)), [int(n) for n in names])
            self.sync()

    def message_ids(self) -> list[str]:
        """The ``empa-id`` of every message waiting (to recognise, after a crash, what was taken already)."""
        return [r[0] for r in self._db.execute("SELECT empaid FROM outbox ORDER BY id")]

    def count(self) -> int:
        """How many elements wait for a receipt."""
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        """Commit what was added, close the database and release the exclusive lock."""
        try:
            self.sync()
            self._db.close()
        finally:
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
