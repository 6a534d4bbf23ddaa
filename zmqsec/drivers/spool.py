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

import os
from pathlib import Path

from dirq.queue import Queue
from dirq.QueueSimple import QueueSimple

from zmqsec.errors import ZmqsecError
from zmqsec.files import atomic_write, fsync_tree

QSCHEMA = {"body": "string", "signer": "string", "empaid": "string?"}
REJECT_SCHEMA = {"body": "string", "signer": "string?", "empaid": "string?", "error": "string"}


class SpoolError(ZmqsecError):
    """A spool directory cannot be used."""


class OutgoingSpool:
    """Messages waiting to be published; ``kind`` is ``dirq`` or ``directory``."""

    def __init__(self, path: str | os.PathLike, kind: str = "dirq") -> None:
        self.path = Path(path)
        self.kind = kind
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._queue = QueueSimple(str(self.path)) if kind == "dirq" else None
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot use outgoing spool ({exc.strerror})") from None

    def take(self, limit: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``limit`` waiting messages, oldest first, each locked until :meth:`done` or :meth:`release`."""
        items: list[tuple[str, bytes]] = []
        if self._queue is not None:
            self._queue.purge(maxtemp=300, maxlock=600)  # recover items a crashed run left locked
            for name in sorted(self._queue):
                if len(items) >= limit:
                    break
                if not self._queue.lock(name):
                    continue
                try:
                    data = self._queue.get(name)
                except OSError:
                    self._queue.unlock(name)
                    continue
                items.append((name, data if isinstance(data, bytes) else data.encode()))
            return items
        entries = [e for e in os.scandir(self.path) if e.is_file() and not e.name.startswith(".")]
        for entry in sorted(entries, key=lambda e: (e.stat().st_mtime_ns, e.name))[:limit]:
            try:
                items.append((entry.name, Path(entry.path).read_bytes()))
            except OSError:
                continue
        return items

    def done(self, name: str) -> None:
        """The message is published: remove it."""
        if self._queue is not None:
            self._queue.remove(name)
        else:
            os.unlink(self.path / name)

    def release(self, name: str) -> None:
        """The message was not published: leave it for the next pass."""
        if self._queue is not None:
            self._queue.unlock(name)

    def add(self, data: bytes) -> str:
        """Put a message in the spool (what an accounting client does)."""
        if self._queue is not None:
            return self._queue.add(data)
        name = os.urandom(8).hex()
        atomic_write(self.path / name, data)
        return name


class IncomingSpool:
    """Verified messages in SSM's incoming queue format, refusals in its reject queue."""

    def __init__(self, path: str | os.PathLike, reject_path: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        try:
            self.queue = Queue(str(self.path), schema=QSCHEMA)
            self.rejects = Queue(str(reject_path), schema=REJECT_SCHEMA) if reject_path else None
        except OSError as exc:
            raise SpoolError(f"{self.path}: cannot use incoming spool ({exc.strerror})") from None

    def accept(self, body: bytes, signer: str, empaid: str) -> str | None:
        """Store a verified message; returns its name, or None if it went to the reject queue."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.reject(body, "message body is not UTF-8 text", signer, empaid)
            return None
        name = self.queue.add({"body": text, "signer": signer, "empaid": empaid})
        fsync_tree(self.path, name)  # durable before anyone acknowledges it
        return name

    def reject(self, body: bytes, error: str, signer: str | None = None, empaid: str | None = None) -> str | None:
        """Record a refused message and why in the reject queue, durably.

        Returns the element's name, or None if there is no reject queue.  A body
        that is not UTF-8 is kept with the bad bytes replaced.
        """
        if self.rejects is None:
            return None
        element = {"body": body.decode("utf-8", errors="replace"), "error": error}
        if signer:
            element["signer"] = signer
        if empaid:
            element["empaid"] = empaid
        name = self.rejects.add(element)
        fsync_tree(Path(self.rejects.path), name)
        return name

    def messages(self) -> list[dict]:
        """Every message in the incoming queue, oldest first (for tools and tests)."""
        out = []
        for name in self.queue:
            if self.queue.lock(name):
                out.append(self.queue.get(name))
                self.queue.unlock(name)
        return out
