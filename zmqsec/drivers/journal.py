"""The journal (docs/PROTOCOL.md §10.3): every distinct frame a publisher sent (or a relay passed on),
byte for byte, in SQLite in WAL mode, for replay.

Why SQLite: one well-kept file format with atomic, checksummed commits (a
transaction cut short by kill -9 is rolled back; WAL frames carry checksums,
so a torn tail is found and cut off), indexes for the lookups replay needs,
and concurrent readers (the replay thread) beside the one writer.  Each row
also carries the SHA-256 of its frame: a row whose bytes were damaged on
disk is never served.

In key tree mode the publisher's journal also holds, per run and tree update,
the update's root key and who joined and left, sealed under its archive key
(rows of kind 'T', not frames: :mod:`zmqsec.protocol.rootarchive`), written in
the batch of the epoch announcement wrapped under that root.

One writer per journal (the publisher's or the relay's main thread): frames
are added to a batch and committed together, synced, with the names of the
spool items they carry (group commit).  Readers open their own
:class:`JournalReader`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from zmqsec.crypto import cms, enveloped
from zmqsec.errors import ZmqsecError
from zmqsec.protocol import frames
from zmqsec.protocol.primitives import frame_digest  # a row's digest: the §5 frame digest, of any kind of frame

log = logging.getLogger("zmqsec.journal")

DATABASE = "journal.sqlite"
DEFAULT_MAX_AGE = 7 * 86400.0
DEFAULT_MAX_BYTES = 10 * 1024**3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    stream_id BLOB PRIMARY KEY, stream BLOB NOT NULL, started REAL NOT NULL,
    previous BLOB NOT NULL DEFAULT x'', previous_last INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY, stream_id BLOB NOT NULL, kind TEXT NOT NULL,
    seq INTEGER NOT NULL, seq_end INTEGER NOT NULL, epoch INTEGER NOT NULL,
    kek BLOB NOT NULL DEFAULT x'', keks BLOB NOT NULL DEFAULT x'',
    written REAL NOT NULL, topic BLOB NOT NULL, body BLOB NOT NULL, digest BLOB NOT NULL UNIQUE);
CREATE INDEX IF NOT EXISTS frames_lookup ON frames (stream_id, kind, seq);
CREATE INDEX IF NOT EXISTS frames_written ON frames (written);
CREATE INDEX IF NOT EXISTS frames_epoch ON frames (stream_id, kind, epoch);
CREATE TABLE IF NOT EXISTS spooled (
    name TEXT NOT NULL, digest BLOB NOT NULL, stream_id BLOB NOT NULL, seq INTEGER NOT NULL,
    written REAL NOT NULL, PRIMARY KEY (name, digest));
"""


class JournalError(ZmqsecError):
    """The journal cannot be opened or written."""


class JournalFull(JournalError):
    """The journal's filesystem is full: nothing of the batch was committed."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One frame as the journal indexes it."""

    stream_id: bytes
    kind: str  # D, K, G, S, R; T: a sealed root record (key tree mode), not a frame
    seq: int  # D: its seq; S: first seq; K: epoch; G and T: generation
    seq_end: int  # D: its seq; S: last seq covered
    epoch: int  # D and K: the epoch
    kek: bytes  # G: the key id of its group key
    keks: bytes  # K: the KEK ids the envelope wraps for, NUL-separated
    topic: bytes
    body: bytes
    known_digest: bytes = b""  # the frame's digest when the caller has it already (a data frame's checkpoint entry)

    @property
    def digest(self) -> bytes:
        """The frame's digest (:func:`frame_digest`)."""
        return self.known_digest or frame_digest(self.topic, self.body)




def describe(parts: list[bytes]) -> Entry | None:
    """Index a frame by what replay looks it up by, or None for a frame no replay serves (key tree messages:
    a reader gets its path anew by subscribing, docs/PROTOCOL.md §4.6); raises :class:`frames.FrameError` for a
    bad frame."""
    frame = frames.decode(parts)
    if isinstance(frame, frames.TreeAnnouncement):
        return None
    topic, body = bytes(parts[0]), bytes(parts[1])
    if isinstance(frame, frames.DataFrame):
        return Entry(frame.stream_id, "D", frame.seq, frame.seq, frame.epoch, b"", b"", topic, body)
    if isinstance(frame, frames.Checkpoint):
        return Entry(frame.stream_id, "S", frame.first_seq, frame.first_seq + frame.count - 1, 0, b"", b"", topic, body)
    if isinstance(frame, frames.Announcement):
        try:
            keks = b"\0".join(enveloped.recipients(frame.envelope).kek_ids)
        except cms.CmsError:
            keks = b""
        return Entry(frame.stream_id, "K", frame.epoch, frame.epoch, frame.epoch, b"", keks, topic, body)
    if isinstance(frame, frames.GroupAnnouncement):
        kek = frame.tag + b"." + str(frame.generation).encode()
        return Entry(frame.stream_id, "G", frame.generation, frame.generation, 0, kek, b"", topic, body)
    return Entry(frame.stream_id, "R", 0, 0, 0, b"", b"", topic, body)


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    if not readonly:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before WAL: it takes effect on a new database only
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


@dataclass(frozen=True)
class RunInfo:
    """What a journal holds of one run."""

    stream: bytes
    stream_id: bytes
    previous: bytes
    previous_last: int
    last_seq: int  # the last data frame committed
    first_available: int  # the oldest data frame still held (none: last_seq + 1, or 0 before any)
    last_available: int


class Journal:
    """The writer's side: append, commit, retention.  Not thread-safe; one per process."""

    def __init__(self, directory: str | os.PathLike, *, max_age: float = DEFAULT_MAX_AGE,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock=time.time) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DATABASE
        self.max_age, self.max_bytes, self._clock = max_age, max_bytes, clock
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal ({exc})") from None
        except OSError as exc:
            raise JournalError(f"{self.directory}: cannot use as journal directory ({exc.strerror})") from None
        self._batch: list[Entry] = []
        self._spooled: list[tuple[str, bytes, bytes, int]] = []
        self._known_runs: set[bytes] = set()
        self._writer_db: sqlite3.Connection | None = None  # a background committer's connection

    # -- runs ---------------------------------------------------------------------------------

    def last_run(self, stream: bytes) -> tuple[bytes, int] | None:
        """The newest run of ``stream`` the journal holds, and its last committed sequence number."""
        row = self._db.execute("SELECT stream_id, last_seq FROM runs WHERE stream = ? ORDER BY started DESC, rowid DESC "
                               "LIMIT 1", (stream,)).fetchone()
        return (row[0], row[1]) if row else None

    def open_run(self, stream: bytes, stream_id: bytes, previous: tuple[bytes, int] | None) -> None:
        """Record a new run of ``stream`` (before its first frame)."""
        prev_id, prev_last = previous or (b"", 0)
        self._write(lambda db: db.execute(
            "INSERT OR IGNORE INTO runs (stream_id, stream, started, previous, previous_last) VALUES (?, ?, ?, ?, ?)",
            (stream_id, stream, self._clock(), prev_id, prev_last)))
        self._known_runs.add(stream_id)

    # -- writing ---------------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """One frame into the current batch (written at the next :meth:`commit`)."""
        self._batch.append(entry)

    def add_parts(self, parts: list[bytes]) -> None:
        """One frame, indexed from its bytes (relays); a frame that does not decode, or that no replay serves,
        is not kept."""
        try:
            entry = describe(parts)
        except frames.FrameError:
            return
        if entry is not None:
            self.add(entry)

    def spooled(self, name: str, data_digest: bytes, stream_id: bytes, seq: int) -> None:
        """A spool item travels in the current batch: the journal remembers it, so it is never published twice."""
        self._spooled.append((name, data_digest, stream_id, seq))

    def discard(self) -> None:
        """Drop the batch (an archive that cannot write keeps forwarding)."""
        self._batch, self._spooled = [], []

    @property
    def pending(self) -> int:
        """Frames added since the last commit."""
        return len(self._batch)

    def commit(self) -> None:
        """Write the batch and its spool items in one transaction, synced; raises :class:`JournalFull` when
        the disk is full (the batch is kept, so a later commit writes it)."""
        batch = self.take()
        try:
            self.write(batch)
        except JournalError:
            self.restore(batch)
            raise

    def take(self) -> tuple[list[Entry], list]:
        """The batch and its spool items, handed over (for :meth:`write`, maybe in another thread)."""
        batch, self._batch, self._spooled = (self._batch, self._spooled), [], []
        return batch

    def restore(self, batch: tuple[list[Entry], list]) -> None:
        """A batch :meth:`write` could not write goes back ahead of what was added since."""
        self._batch, self._spooled = batch[0] + self._batch, batch[1] + self._spooled

    def write(self, batch: tuple[list[Entry], list], *, own_connection: bool = False) -> None:
        """Write a batch taken with :meth:`take` in one synced transaction; with ``own_connection``, on the
        connection of the one thread that writes batches beside the owner's (a background committer)."""
        entries, spooled = batch
        if not entries and not spooled:
            return
        now = self._clock()

        def write(db: sqlite3.Connection) -> None:
            for entry in entries:
                if entry.stream_id not in self._known_runs:  # a relay meets runs in the frames it passes
                    db.execute("INSERT OR IGNORE INTO runs (stream_id, stream, started) VALUES (?, ?, ?)",
                               (entry.stream_id, frames.stream_name(entry.topic), now))
                    self._known_runs.add(entry.stream_id)
            db.executemany(
                "INSERT OR IGNORE INTO frames (stream_id, kind, seq, seq_end, epoch, kek, keks, written, topic, body, "
                "digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.stream_id, e.kind, e.seq, e.seq_end, e.epoch, e.kek, e.keks, now, e.topic, e.body, e.digest)
                 for e in entries])
            last: dict[bytes, int] = {}
            for e in entries:
                if e.kind == "D":
                    last[e.stream_id] = max(last.get(e.stream_id, 0), e.seq)
            db.executemany("UPDATE runs SET last_seq = MAX(last_seq, ?) WHERE stream_id = ?",
                           [(seq, sid) for sid, seq in last.items()])
            db.executemany("INSERT OR IGNORE INTO spooled (name, digest, stream_id, seq, written) VALUES (?, ?, ?, ?, ?)",
                           [(*item, now) for item in spooled])

        self._write(write, self._writer() if own_connection else self._db)

    def _writer(self) -> sqlite3.Connection:
        if self._writer_db is None:
            self._writer_db = _connect(self.path)
        return self._writer_db

    def _write(self, work, db: sqlite3.Connection | None = None) -> None:
        db = db or self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise JournalFull(f"{self.path}: disk full, the journal cannot grow ({exc})") from None
            raise JournalError(f"{self.path}: cannot write the journal ({exc})") from None
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot write the journal ({exc})") from None

    def published(self, name: str, data_digest: bytes) -> bool:
        """Does the journal hold this spool item already (a restart after kill -9)?"""
        return self._db.execute("SELECT 1 FROM spooled WHERE name = ? AND digest = ?", (name, data_digest)).fetchone() \
            is not None

    # -- retention --------------------------------------------------------------------------------

    def expire(self) -> int:
        """Drop the data frames and checkpoints older than ``max_age`` and, while the files are over
        ``max_bytes``, the oldest ones; then the announcements, group announcements and run frames no data
        frame left needs (an epoch's announcement stays as long as one of its frames does); give the space
        back.  Returns how many frames went."""
        cutoff, dropped = self._clock() - self.max_age, 0

        def drop(db: sqlite3.Connection, where: str, args: tuple) -> None:
            nonlocal dropped
            dropped += db.execute(f"DELETE FROM frames WHERE kind IN ('D', 'S') AND {where}", args).rowcount
            dropped += db.execute(
                f"DELETE FROM frames WHERE kind = 'K' AND {where} AND NOT EXISTS (SELECT 1 FROM frames d "
                "WHERE d.stream_id = frames.stream_id AND d.kind = 'D' AND d.epoch = frames.epoch)", args).rowcount
            dropped += db.execute(
                f"DELETE FROM frames WHERE kind IN ('G', 'R', 'T') AND {where} AND NOT EXISTS (SELECT 1 FROM frames d "
                "WHERE d.stream_id = frames.stream_id AND d.kind = 'D')", args).rowcount

        def drop_old(db: sqlite3.Connection) -> None:
            drop(db, "written < ?", (cutoff,))
            db.execute("DELETE FROM spooled WHERE written < ?", (cutoff,))

        self._write(drop_old)
        while self.size() > self.max_bytes:
            row = self._db.execute("SELECT id FROM frames WHERE kind IN ('D', 'S') ORDER BY id LIMIT 1 OFFSET ?",
                                   (max(1, self.count() // 10),)).fetchone()
            if row is None:
                break
            self._write(lambda db, below=row[0]: drop(db, "id < ?", (below,)))
            self._give_back()
        if dropped:
            self._give_back()
            log.info("journal %s: %d frame(s) past retention dropped", self.path, dropped)
        return dropped

    def _give_back(self) -> None:
        """Return free pages to the filesystem and empty the write-ahead log."""
        self._db.executescript("PRAGMA incremental_vacuum;")  # run to completion (execute() frees one page)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def size(self) -> int:
        """Bytes the journal occupies (database and write-ahead log)."""
        return sum(p.stat().st_size for p in self.directory.glob(DATABASE + "*") if p.is_file())

    def count(self) -> int:
        """Frames held."""
        return self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]

    def close(self) -> None:
        """Close the database (a pending batch is not written)."""
        if self._writer_db is not None:
            self._writer_db.close()
        self._db.close()


class JournalReader:
    """A read-only view for replay, on its own connection (one per thread)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / DATABASE
        try:
            self._db = _connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal for reading ({exc})") from None
        self.damaged = 0  # rows whose bytes did not match their digest

    def run(self, stream: bytes, stream_id: bytes) -> RunInfo | None:
        """What the journal holds of a run of ``stream``, or None."""
        row = self._db.execute("SELECT previous, previous_last, last_seq FROM runs WHERE stream_id = ? AND stream = ?",
                               (stream_id, stream)).fetchone()
        if row is None:
            return None
        first, last = self._db.execute("SELECT MIN(seq), MAX(seq) FROM frames WHERE stream_id = ? AND kind = 'D'",
                                       (stream_id,)).fetchone()
        if first is None:  # nothing held: everything committed expired (an empty range after it), or none yet
            first, last = row[2] + 1 if row[2] else 0, row[2]
        return RunInfo(stream, stream_id, row[0], row[1], row[2], first, last)

    def _rows(self, sql: str, args: tuple) -> list[tuple]:
        out = []
        for row in self._db.execute(sql, args):
            *meta, topic, body, digest = row
            if frame_digest(topic, body) != digest:
                self.damaged += 1
                log.error("journal %s: a stored frame is damaged (digest mismatch); it is not served", self.path)
                continue
            out.append((*meta, topic, body))
        return out

    def data(self, stream_id: bytes, first: int, last: int, limit: int) -> list[tuple[int, int, bytes, bytes]]:
        """(seq, epoch, topic, body) of the data frames ``first..last``, at most ``limit``, in order."""
        return self._rows("SELECT seq, epoch, topic, body, digest FROM frames WHERE stream_id = ? AND kind = 'D' "
                          "AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (stream_id, first, last, limit))

    def checkpoints(self, stream_id: bytes, first: int, last: int) -> list[tuple[int, int, bytes, bytes]]:
        """(first seq, last seq, topic, body) of the checkpoints that cover any of ``first..last``."""
        return self._rows("SELECT seq, seq_end, topic, body, digest FROM frames WHERE stream_id = ? AND kind = 'S' "
                          "AND seq <= ? AND seq_end >= ? ORDER BY seq_end", (stream_id, last, first))

    def announcement(self, stream_id: bytes, epoch: int) -> tuple[bytes, bytes, bytes] | None:
        """(KEK ids, topic, body) of the epoch's announcement."""
        rows = self._rows("SELECT keks, topic, body, digest FROM frames WHERE stream_id = ? AND kind = 'K' AND seq = ? "
                          "ORDER BY id DESC LIMIT 1", (stream_id, epoch))
        return rows[0] if rows else None

    def group_announcements(self, stream_id: bytes, keks: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
        """(KEK id, topic, body) of the group announcements carrying these group keys."""
        if not keks:
            return []
        marks = ",".join("?" * len(keks))
        return self._rows(f"SELECT kek, topic, body, digest FROM frames WHERE stream_id = ? AND kind = 'G' "
                          f"AND kek IN ({marks})", (stream_id, *keks))

    def roots(self, stream_id: bytes) -> list[tuple[int, bytes]]:
        """(generation, sealed record) of the run's key tree roots, in generation order."""
        return [(g, body) for g, _, body in self._rows("SELECT seq, topic, body, digest FROM frames WHERE stream_id = ? "
                                                       "AND kind = 'T' ORDER BY seq", (stream_id,))]

    def has_roots(self) -> bool:
        """Does the journal hold sealed key tree roots (of any run)?"""
        return self._db.execute("SELECT 1 FROM frames WHERE kind = 'T' LIMIT 1").fetchone() is not None

    def newest_root(self, stream_id: bytes) -> int:
        """The newest generation of the run's root records (0: none)."""
        row = self._db.execute("SELECT MAX(seq) FROM frames WHERE stream_id = ? AND kind = 'T'", (stream_id,)).fetchone()
        return row[0] or 0

    def run_frame(self, stream_id: bytes) -> tuple[bytes, bytes] | None:
        """(topic, body) of the run's R frame."""
        rows = self._rows("SELECT topic, body, digest FROM frames WHERE stream_id = ? AND kind = 'R' "
                          "ORDER BY id DESC LIMIT 1", (stream_id,))
        return rows[0] if rows else None

    def close(self) -> None:
        """Close the connection."""
        self._db.close()
