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
ANSWERS_PER_SECOND = 20  # new answers made per second at most, in bursts of as many (each costs a signature and an
#                          RSA encryption: a flood of questions cannot take the CPU from the live stream)


def archive_key(directory: str | os.PathLike) -> bytes:
    """The journal's archive key: made (0600) the first time, then read after checking its mode."""
    path = Path(directory) / KEY_FILE
    if not path.exists():
        atomic_write(path, os.urandom(KEY_BYTES), mode=0o600)
    check_private_key_mode(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: not a {KEY_BYTES}-byte archive key ({len(key)} bytes)")
    return key


class RootArchive:
    """Seals each key tree update's root record into the publisher's journal batch."""

    def __init__(self, journal: Journal, stream: bytes, stream_id: bytes) -> None:
        self.journal, self.stream, self.stream_id = journal, stream, stream_id
        self.key = archive_key(journal.directory)

    def add(self, record: RootRecord) -> None:
        """Into the batch the update's announcements go in (journaled with them, or not at all)."""
        sealed = seal(self.key, self.stream_id, record, os.urandom)
        self.journal.add(Entry(self.stream_id, "T", record.generation, record.generation, 0, b"", b"",
                               self.stream + b"\x00T", sealed))


class RootServer:
    """Answers roots requests on the replay server's thread."""

    def __init__(self, directory: str | os.PathLike, credential, readers: Callable[[], ReaderSet], *,
                 transport: str, wall_clock=None, clock=time.monotonic) -> None:
        self.directory = directory
        self._key: bytes | None = None  # read when a run with roots is first asked for
        self.credential, self.readers, self.transport, self.wall_clock = credential, readers, transport, wall_clock
        self._clock = clock
        self._answers: OrderedDict[tuple, list[bytes]] = OrderedDict()  # for the reader set indexed
        self._tokens, self._filled = float(ANSWERS_PER_SECOND), clock()
        self._histories: OrderedDict[bytes, RootHistory] = OrderedDict()
        self._indexed: ReaderSet | None = None
        self._index: dict = {}

    def _reader(self, fingerprint: bytes):
        """The reader of the current registry with that fingerprint (the index is made once per reader set)."""
        readers = self.readers()
        if readers is not self._indexed:
            self._index = {bytes.fromhex(r.fingerprint): r for r in readers}
            self._indexed, self._answers = readers, OrderedDict()
        return self._index.get(fingerprint)

    def _history(self, journal: JournalReader, run: bytes, generation: int) -> RootHistory | None:
        """The run's root history; read again when the request is for a generation past it that the journal now
        holds (the live run goes on making updates)."""
        history = self._histories.get(run)
        if history is None or (generation > history.newest and journal.newest_root(run) > history.newest):
            rows = journal.roots(run)
            if not rows:
                return None
            if self._key is None:
                self._key = archive_key(self.directory)
            history = RootHistory(unseal(self._key, run, generation, sealed) for generation, sealed in rows)
            self._histories[run] = history
            while len(self._histories) > HISTORIES_KEPT:
                self._histories.popitem(last=False)
        self._histories.move_to_end(run)
        return history

    def _afford(self) -> bool:
        now = self._clock()
        self._tokens = min(float(ANSWERS_PER_SECOND), self._tokens + (now - self._filled) * ANSWERS_PER_SECOND)
        self._filled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def answer(self, journal: JournalReader, request: replay.Roots) -> list[bytes] | replay.Error:
        """The path envelope with the roots the reader is entitled to, or the error to send."""
        if journal.run(request.stream, request.run) is None:
            return replay.Error(request.id, replay.UNKNOWN_RUN, f"run {request.run.hex()} is not in this journal")
        try:
            history = self._history(journal, request.run, request.generation)
        except (ArchiveError, KeyFileError) as exc:
            log.error("roots of run %s: %s", request.run.hex(), exc)
            history = None
        if history is None:
            return replay.Error(request.id, replay.NO_KEYS, "this server keeps no key tree roots of that run")
        fingerprint = int(request.bits, 2).to_bytes(32, "big")
        reader = self._reader(fingerprint)  # first: a new reader set forgets the answers made for the last one
        keys = history.entitled(fingerprint, request.generation) if reader is not None else []
        if not keys:
            return replay.Error(request.id, replay.NOT_A_READER, "no reader of the registry with those bits was in "
                                f"the tree at generation {request.generation} or later")
        question = (request.run, fingerprint, keys[0].generation)
        answer = self._answers.get(question)
        if answer is not None:
            return answer
        if not self._afford():
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
