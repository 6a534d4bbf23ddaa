"""Key tree roots of past runs (docs/PROTOCOL.md §4.6, §10.4): the publisher's archive key, and the answers to
roots requests that its replay server gives.

The archive key seals the root records the journal keeps (:mod:`zmqsec.protocol.rootarchive`).  It lives in
``roots.key`` beside the journal, readable by its owner only (created 0600; refused if group or others may read
it): the journal's file alone reveals no key.  A roots request is answered for a reader of the current registry
only, with the roots of the updates it was in the tree for, in a path envelope wrapped for its certificate and
signed by the publisher: anyone may ask, only that reader can open the answer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from zmqsec.crypto.enveloped import CertificateRecipient
from zmqsec.errors import ZmqsecError
from zmqsec.files import atomic_write
from zmqsec.keys.errors import KeyFileError
from zmqsec.keys.pemfiles import check_private_key_mode
from zmqsec.keys.registry import ReaderSet
from zmqsec.protocol import replay
from zmqsec.protocol.announce import make_tree_announcement
from zmqsec.protocol.frames import encode
from zmqsec.protocol.primitives import KEY_BYTES
from zmqsec.protocol.rootarchive import ArchiveError, RootHistory, RootRecord, seal, unseal

from .journal import Entry, Journal, JournalReader

log = logging.getLogger("zmqsec.replay")

KEY_FILE = "roots.key"
HISTORIES_KEPT = 8  # runs whose root history stays open in memory (a run's first request unseals it)
ANSWERS_KEPT = 1024  # answers kept while the reader set stays the same (the same question costs nothing again)
# New answers made per second at most, in bursts of as many (each costs a signature and an RSA encryption), and
# histories read from the journal (each unseals a run's records): a flood of questions, even in a reader's name,
# cannot take the CPU from the live stream.
ANSWERS_PER_SECOND = 20
LOADS_PER_SECOND = 2


def archive_key(directory: str | os.PathLike, *, create: bool = False) -> bytes | None:
    """The journal's archive key, read after checking its mode; made (0600) if missing and ``create``, else None
    if missing."""
    path = Path(directory) / KEY_FILE
    if not path.exists():
        if not create:
            return None
        atomic_write(path, os.urandom(KEY_BYTES), mode=0o600)
    check_private_key_mode(path)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the archive key ({exc.strerror})") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: not a {KEY_BYTES}-byte archive key ({len(key)} bytes)")
    return key


def load_archive_key(journal: Journal, *, tree_mode: bool) -> bytes | None:
    """The publisher's archive key, read once at start: made in key tree mode if there is none yet, and never
    made anew for a journal that holds roots sealed under a key now missing (they would be lost for good)."""
    key = archive_key(journal.directory)
    reader = JournalReader(journal.directory)
    try:
        sealed_before = reader.has_roots()
    finally:
        reader.close()
    if key is None and sealed_before:
        raise KeyFileError(f"{Path(journal.directory) / KEY_FILE}: missing, but the journal holds key tree roots "
                           "sealed under it; restore the file from a backup, or move the journal aside")
    return key if key is not None or not tree_mode else archive_key(journal.directory, create=True)


class RootArchive:
    """Seals each key tree update's root record into the publisher's journal batch."""

    def __init__(self, journal: Journal, stream: bytes, stream_id: bytes, key: bytes) -> None:
        self.journal, self.stream, self.stream_id, self.key = journal, stream, stream_id, key

    def add(self, record: RootRecord) -> None:
        """Into the batch the update's announcements go in (journaled with them, or not at all)."""
        sealed = seal(self.key, self.stream_id, record, os.urandom)
        self.journal.add(Entry(self.stream_id, "T", record.generation, record.generation, 0, b"", b"",
                               self.stream + b"\x00T", sealed))


class _Bucket:
    """At most ``rate`` a second, in bursts of as many."""

    def __init__(self, rate: float, clock) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.filled = float(rate), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens, self.filled = min(float(self.rate), self.tokens + (now - self.filled) * self.rate), now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RootServer:
    """Answers roots requests on the replay server's thread."""

    def __init__(self, key: bytes | None, credential, readers: Callable[[], ReaderSet], *,
                 transport: str, wall_clock=None, clock=time.monotonic) -> None:
        self.key = key  # None: no archive key, no roots to give
        self.credential, self.readers, self.transport, self.wall_clock = credential, readers, transport, wall_clock
        self._answers: OrderedDict[tuple, list[bytes]] = OrderedDict()  # for the reader set indexed
        self._new_answers, self._loads = _Bucket(ANSWERS_PER_SECOND, clock), _Bucket(LOADS_PER_SECOND, clock)
        self._histories: OrderedDict[bytes, tuple[RootHistory, int]] = OrderedDict()  # run -> (history, newest row)
        self._indexed: ReaderSet | None = None
        self._index: dict = {}

    def _reader(self, fingerprint: bytes):
        """The reader of the current registry with that fingerprint (the index is made once per reader set)."""
        readers = self.readers()
        if readers is not self._indexed:
            self._index = {bytes.fromhex(r.fingerprint): r for r in readers}
            self._indexed, self._answers = readers, OrderedDict()
        return self._index.get(fingerprint)

    def _history(self, journal: JournalReader, run: bytes) -> RootHistory | None:
        """The run's root history, read again only when the journal holds newer records than it (the live run
        goes on making updates); None when a read is due and the budget for reads is spent."""
        cached = self._histories.get(run)
        newest = journal.newest_root(run)
        if cached is None or newest > cached[1]:
            if not self._loads.take():
                return None
            try:
                history = RootHistory(unseal(self.key, run, g, sealed) for g, sealed in journal.roots(run))
            except ArchiveError as exc:  # kept as empty until newer records come: logged once, not per request
                log.error("roots of run %s: %s", run.hex(), exc)
                history = RootHistory(())
            cached = self._histories[run] = (history, newest)
            while len(self._histories) > HISTORIES_KEPT:
                self._histories.popitem(last=False)
        self._histories.move_to_end(run)
        return cached[0]

    def answer(self, journal: JournalReader, request: replay.Roots) -> list[bytes] | replay.Error:
        """The path envelope with the roots the reader is entitled to, or the error to send.  Checks cost
        dictionary lookups and an indexed query before any journal read or signature, which are rate-limited.
        A journal that cannot be read is an error answer, never the end of the replay thread (§10.4)."""
        try:
            return self._answer(journal, request)
        except (sqlite3.Error, OSError):
            log.exception("roots request %d: the journal cannot be read", request.id)
            return replay.Error(request.id, replay.NO_KEYS, "this server cannot read its roots now (see its log)")

    def _answer(self, journal: JournalReader, request: replay.Roots) -> list[bytes] | replay.Error:
        if self.key is None:
            return replay.Error(request.id, replay.NO_KEYS, "this server keeps no key tree roots")
        fingerprint = int(request.bits, 2).to_bytes(32, "big")
        reader = self._reader(fingerprint)  # first: a new reader set forgets the answers made for the last one
        if reader is None:
            return replay.Error(request.id, replay.NOT_A_READER, "no reader of the registry has those bits")
        if journal.run(request.stream, request.run) is None:
            return replay.Error(request.id, replay.UNKNOWN_RUN, f"run {request.run.hex()} is not in this journal")
        history = self._history(journal, request.run)
        if history is None:
            return replay.Error(request.id, replay.BUSY, "too many roots requests; ask again later")
        if not history.roots:
            return replay.Error(request.id, replay.NO_KEYS, "this server keeps no key tree roots of that run")
        keys = history.entitled(fingerprint, request.generation)
        if not keys:
            return replay.Error(request.id, replay.NOT_A_READER, "that reader was not in the tree at generation "
                                f"{request.generation} or later")
        question = (request.run, fingerprint, keys[0].generation)
        answer = self._answers.get(question)
        if answer is not None:
            return answer
        if not self._new_answers.take():
            return replay.Error(request.id, replay.BUSY, "too many roots requests; ask again later")
        try:
            answer = encode(make_tree_announcement(request.stream, request.run, request.bits, keys, (),
                                                   [CertificateRecipient(reader.certificate, self.transport)],
                                                   self.credential, clock=self.wall_clock))
        except ZmqsecError as exc:
            return replay.Error(request.id, replay.NO_KEYS, f"cannot wrap for that reader: {exc}")
        self._answers[question] = answer
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)
        return answer
