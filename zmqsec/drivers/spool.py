"""SSM-style spools: an outgoing directory that empties as messages are published,
and incoming/reject dirq queues with the schema APEL SSM's receiver writes.

Outgoing: a dirq ``QueueSimple`` (what SSM's sender reads) or a plain directory
of files; an item is removed only after it has been handed to the stream.
Incoming: a dirq ``Queue`` with ``body``, ``signer`` (the publisher DN) and
``empaid`` (a message id), so APEL's loader reads it unchanged; refusals go to
a reject queue with an ``error`` field.  dirq writes each element to a
temporary file and renames it into place, so an added message is durable
and fsync'ed before anything is acknowledged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from dirq.queue import Queue
from dirq.QueueSimple import LOCKED_SUFFIX, QueueSimple

from zmqsec.errors import RejectReason, ZmqsecError
from zmqsec.files import atomic_write, fsync_tree, sync_filesystem

log = logging.getLogger("zmqsec.spool")

QSCHEMA = {"body": "string", "signer": "string", "empaid": "string?"}
# SSM's reject schema, and the refused message's exact bytes (``original``, so that it can be replayed).
REJECT_SCHEMA = {"body": "string", "signer": "string?", "empaid": "string?", "error": "string", "original": "binary?"}


def disk_full(exc: OSError) -> bool:
    """Is this the filesystem being full?  dirq re-raises write errors as a new OSError without the errno,
    so its message is read too."""
    text = str(exc)
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "[Errno 28]" in text or "[Errno 122]" in text


class SpoolError(ZmqsecError):
    """A spool directory cannot be used."""


class OutgoingSpool:
    """Messages waiting to be published; ``kind`` is ``dirq`` or ``directory``.

    Nothing in it is ever lost: an item leaves only by :meth:`done` (published) or
    :meth:`set_aside` (refused: moved to the reject directory beside the spool, with a
    ``.reason`` file, and logged).  An entry that cannot be read is set aside once and never
    counts against a batch; one that vanished between listing and reading is already gone.  In
    a plain directory, a file is taken only once its size and modification time have not changed for
    ``settle`` seconds, so that one still being written in place is not published half-written.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "dirq", *, reject: str | os.PathLike | None = None,
                 max_bytes: int | None = None, settle: float = 1.0, exclusive: bool = False,
                 clock=time.monotonic) -> None:
        self.path = Path(path)
        self.kind = kind
        self.reject_path = Path(reject) if reject else self.path.with_name(self.path.name + ".reject")
        self.max_bytes = max_bytes
        self.settle = settle
        self._clock = clock
        self._seen: dict[str, tuple[int, int, float]] = {}  # directory spool: name -> (size, mtime, first seen)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._queue = QueueSimple(str(self.path)) if kind == "dirq" else None
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot use outgoing spool ({exc.strerror})") from None
        self._lock = None
        if exclusive:
            self._own()

    def _own(self) -> None:
        """Take the spool for this publisher alone (an exclusive lock on a dot file inside it, which the queue
        and its other users skip); then every item still locked belongs to a predecessor that was killed, and is
        unlocked so that it is published, not stuck until dirq's 10-minute purge (a lock left without its item
        goes too)."""
        try:
            self._lock = open(self.path / ".zmqsec-publisher.lock", "w")
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolError(f"{self.path}: another publisher is using this outgoing spool; give each its own") from None
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot lock the outgoing spool ({exc.strerror})") from None
        if self._queue is not None:
            # A lock is a hard link ``NAME.lck`` beside the element (dirq's QueueSimple), and the queue's listing
            # shows only elements: look at the links themselves.  One whose element is gone was left by a run
            # killed inside remove() (the element was published and removed; only its lock link remained).
            for lock in self.path.glob(f"*/*{LOCKED_SUFFIX}"):
                with contextlib.suppress(OSError):
                    lock.unlink()

    # -- taking -------------------------------------------------------------------------------

    def take(self, limit: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``limit`` readable messages, oldest first, each locked until :meth:`done` or :meth:`release`."""
        items: list[tuple[str, bytes]] = []
        for name in self._candidates():
            if len(items) >= limit:
                break
            data = self._read(name)
            if data is None:
                continue
            if self.max_bytes is not None and len(data) > self.max_bytes:
                self.set_aside(name, f"oversized: {len(data)} bytes, a frame carries at most {self.max_bytes}")
                continue
            items.append((name, data))
        return items

    def _candidates(self) -> list[str]:
        if self._queue is not None:
            self._queue.purge(maxtemp=300, maxlock=600)  # recover items a crashed run left locked
            return sorted(self._queue)
        now, ready, seen = self._clock(), [], {}
        for entry in os.scandir(self.path):
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            old = self._seen.get(entry.name)
            first = old[2] if old is not None and old[:2] == stamp else now
            seen[entry.name] = (*stamp, first)
            if now - first >= self.settle:
                ready.append((st.st_mtime_ns, entry.name))
        self._seen = seen
        return [name for _, name in sorted(ready)]

    def _read(self, name: str) -> bytes | None:
        """The item's bytes (locked, for dirq); None if it vanished or was set aside as unreadable."""
        try:
            if self._queue is not None:
                if not self._queue.lock(name):
                    return None  # locked by another run, or gone
                data = self._queue.get(name)
                return data if isinstance(data, bytes) else data.encode()
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None  # already gone (another process took it)
        except OSError as exc:
            self.set_aside(name, f"unreadable: {exc.strerror or exc}")
            return None

    # -- leaving -------------------------------------------------------------------------------

    def done(self, name: str) -> None:
        """The message is published (and durable in the journal, when there is one): remove it."""
        try:
            if self._queue is not None:
                self._queue.remove(name)
            else:
                os.unlink(self.path / name)
        except FileNotFoundError:
            self._drop_lock(name)  # already gone: removed by someone else, nothing to lose
        self._seen.pop(name, None)

    def _drop_lock(self, name: str) -> None:
        """A dirq lock left behind by an element that vanished (a hard link: it holds the whole payload)."""
        if self._queue is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / f"{name}.lck")

    def release(self, name: str) -> None:
        """The message was not published: leave it for the next pass."""
        if self._queue is not None:
            try:
                self._queue.unlock(name)
            except OSError:
                pass  # the lock is gone already

    def set_aside(self, name: str, reason: str) -> None:
        """Refuse an item without losing it: move it to the reject directory with a ``.reason`` file, log it."""
        self.reject_path.mkdir(parents=True, exist_ok=True)
        target = self.reject_path / name.replace("/", "-")
        try:
            os.replace(self.path / name, target)
        except FileNotFoundError:
            self._drop_lock(name)
            return
        except OSError as exc:
            log.error("outgoing spool %s: %s is %s, and cannot be moved aside (%s)", self.path, name, reason, exc.strerror)
            return
        self._drop_lock(name)
        atomic_write(target.with_name(target.name + ".reason"), (reason + "\n").encode())
        self._seen.pop(name, None)
        log.error("outgoing spool %s: %s set aside in %s: %s", self.path, name, self.reject_path, reason)

    def add(self, data: bytes) -> str:
        """Put a message in the spool (what an accounting client does)."""
        if self._queue is not None:
            return self._queue.add(data)
        name = os.urandom(8).hex()
        atomic_write(self.path / name, data)
        return name


class SpoolFull(SpoolError):
    """The incoming spool's filesystem is full: nothing was stored."""


class IncomingSpool:
    """Verified messages in SSM's incoming queue format, refusals in its reject queue."""

    def __init__(self, path: str | os.PathLike, reject_path: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        try:
            self.queue = Queue(str(self.path), schema=QSCHEMA)
            self.rejects = Queue(str(reject_path), schema=REJECT_SCHEMA) if reject_path else None
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot use incoming spool ({exc.strerror})") from None

    def accept(self, body: bytes, signer: str, empaid: str, *, durable: bool = True) -> str | None:
        """Store a verified message; returns its name, or None if it went to the reject queue.

        ``durable``: synced before this returns; otherwise call :meth:`sync` once for a batch.
        Raises :class:`SpoolFull` (nothing stored) when the filesystem is full.
        """
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.reject(body, f"{RejectReason.NOT_UTF8}: message body is not UTF-8 text", signer, empaid)
            return None
        try:
            name = self.queue.add({"body": text, "signer": signer, "empaid": empaid})
            if durable:
                fsync_tree(self.path, name)  # durable before anyone acknowledges it
        except OSError as exc:
            if disk_full(exc):
                raise SpoolFull(f"{self.path}: no space left to store a message") from None
            raise
        return name

    def sync(self) -> None:
        """Make every message added so far durable: one sync of the spool's filesystem for a whole batch."""
        sync_filesystem(self.path)

    def recent_ids(self, limit: int) -> list[str]:
        """The ``empaid`` of the newest ``limit`` messages (what a reader stored just before a crash)."""
        names = sorted(self.queue)[-limit:]
        out = []
        for name in names:
            try:
                out.append((self.path / name / "empaid").read_text())
            except OSError:
                continue  # taken by the loader meanwhile
        return out

    def recent_signed_ids(self, limit: int) -> list[tuple[str, str]]:
        """(signer, empaid) of the newest ``limit`` messages (what stomp-in stored before a restart)."""
        out = []
        for name in sorted(self.queue)[-limit:]:
            try:
                out.append(((self.path / name / "signer").read_text(), (self.path / name / "empaid").read_text()))
            except OSError:
                continue  # taken by the loader meanwhile
        return out

    def reject(self, body: bytes, error: str, signer: str | None = None, empaid: str | None = None) -> str | None:
        """Record a refused message and why in the reject queue, durably.

        Returns the element's name, or None if there is no reject queue.  SSM's ``body``
        field is text (bytes that are not UTF-8 are replaced); ``original`` keeps the exact bytes.
        """
        if self.rejects is None:
            return None
        element = {"body": body.decode("utf-8", errors="replace"), "error": error, "original": body}
        if signer:
            element["signer"] = signer
        if empaid:
            element["empaid"] = empaid
        name = self.rejects.add(element)
        fsync_tree(Path(self.rejects.path), name)
        return name

    def count(self) -> int:
        """Messages in the incoming queue."""
        return self.queue.count()

    def messages(self) -> list[dict]:
        """Every message in the incoming queue, oldest first (for tools and tests)."""
        out = []
        for name in self.queue:
            if self.queue.lock(name):
                out.append(self.queue.get(name))
                self.queue.unlock(name)
        return out
