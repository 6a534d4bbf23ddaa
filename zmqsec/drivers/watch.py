"""Cheap change detection for the files a long-running daemon depends on: the publisher's watch on its
reader registry and trust directory, and stomp-in's on the trust directory and DN list it judges signers by."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from zmqsec.errors import ZmqsecError
from zmqsec.keys.dn import DnAllowList, slash_dn
from zmqsec.keys.registry import LoadCache, ReaderRegistry, ReaderSet
from zmqsec.keys.trust import CrlPolicy, TrustStore

from . import coldload

log = logging.getLogger("zmqsec.publisher")
log_signers = logging.getLogger("zmqsec.bridge.in")


def signature(path: Path | None) -> tuple:
    """Names, sizes and mtimes of a directory's entries (or of a single file)."""
    if path is None:
        return ()
    try:
        if path.is_dir():
            entries = []
            for e in os.scandir(path):
                try:
                    st = e.stat()
                except OSError:  # a dangling hash link must not blind us to the rest of the directory
                    st = e.stat(follow_symlinks=False)
                entries.append((e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            return tuple(sorted(entries))
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        return ("missing",)


def directory_stamp(path: Path) -> tuple:
    """The directory's own inode and mtime: changes when an entry is added, removed or renamed into it
    (our tools write by rename), without a stat per entry."""
    try:
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return ("missing",)


@dataclass
class DirectoryWatch:
    """A directory watched at the cost of one stat per look: its own stamp (:func:`directory_stamp`) tells an
    entry added, removed or renamed in (as our tools, fetch-crl and rpm write), and a full listing with every
    entry's size and times (:func:`signature`) every ``full_every`` seconds tells a file rewritten in place
    (and a second change within the file system's timestamp granularity, a few ms, of one already seen).
    An IGTF trust directory holds hundreds of files: looking at each of them ten times a second, per reader,
    cost thousands of stats a second."""

    path: Path
    full_every: float = 10.0
    _stamp: tuple = field(default=(), init=False)
    _listing: tuple = field(default=(), init=False)
    _next_full: float = field(default=0.0, init=False)
    _candidate: tuple = field(default=((), ()), init=False)
    _pending: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._candidate = (directory_stamp(self.path), signature(self.path))
        self.seen(time.monotonic())

    def changed(self, now: float) -> bool:
        """Has the directory changed since :meth:`seen`?  What it is at this look is what ``seen`` then takes in
        (a change made while the caller reloads is seen at the next look)."""
        if self._pending:  # told already, not yet taken in
            return True
        stamp = directory_stamp(self.path)
        if stamp != self._stamp:
            self._candidate, self._pending = (stamp, signature(self.path)), True
            return True
        if now < self._next_full:
            return False
        self._next_full = now + self.full_every
        listing = signature(self.path)
        self._candidate, self._pending = (stamp, listing), listing != self._listing
        return self._pending

    def seen(self, now: float) -> None:
        """The directory as the look that told of the change found it is taken in."""
        self._stamp, self._listing = self._candidate
        self._next_full, self._pending = now + self.full_every, False


@dataclass
class RegistryWatch:
    """Reload the authorized reader set when the registry, the DN list or the trust directory change."""

    registry: ReaderRegistry
    trust_dir: Path | None
    crl: CrlPolicy = CrlPolicy.REQUIRE
    recheck_interval: float = 60.0  # certificates and CRLs expire without any file changing
    _seen: tuple = field(default=(), init=False)
    _loaded_at: float = field(default=0.0, init=False)
    _restated_at: float = field(default=float("-inf"), init=False)  # every file's stat looked at (not only the listing)
    _trust: TrustStore | None = field(default=None, init=False)
    _trust_watch: DirectoryWatch | None = field(default=None, init=False)
    _cache: LoadCache = field(default_factory=LoadCache, init=False)

    def __post_init__(self) -> None:
        if self.trust_dir:
            self._trust_watch = DirectoryWatch(self.trust_dir)

    def _signature(self) -> tuple:
        # The registry directory by its own stamp (a stat per reader file every 0.25 s would cost
        # more than the stream at 10,000 readers); a file overwritten in place is seen at the recheck.
        return directory_stamp(self.registry.directory), signature(self.registry.allowed_dns_path)

    def load(self) -> ReaderSet:
        """The authorized readers now.  With thousands of readers, only what changed is parsed and
        validated again (a revocation by registry removal costs a directory scan, not 10,000 validations)."""
        now = time.monotonic()
        recheck = now - self._loaded_at >= self.recheck_interval
        # A file replaced by rename has a new inode, which the listing shows; one rewritten in place (or a name
        # removed and written anew that got its old inode back) is seen by the stat of every file, once a recheck.
        restat = now - self._restated_at >= self.recheck_interval
        trust_changed = self._trust_watch is not None and self._trust_watch.changed(now)
        self._seen, self._loaded_at = self._signature(), now
        self._restated_at = now if restat else self._restated_at
        if not self.trust_dir:
            readers = self.registry.load(cache=self._cache, restat=restat)
        else:
            readers = self.registry.load(self._trust_store(trust_changed or recheck), crl=self.crl, cache=self._cache,
                                         restat=restat, prejudge=coldload.prejudge)
            self._trust_watch.seen(now)
        for refusal in readers.refused:
            log.warning("reader registry: %s refused [%s]: %s", refusal.path.name, refusal.reason, refusal.message)
        return readers

    def _trust_store(self, reread: bool) -> TrustStore:
        """The trust store, re-read when its directory changed and at every recheck (a CRL rewritten with
        the same size and times); kept as the same object -- and so are the cached verdicts -- while its
        certificates and CRLs are the same."""
        held = self._trust
        if held is None or reread:
            fresh = TrustStore.from_directory(self.trust_dir)
            if held is None or fresh.fingerprint != held.fingerprint:
                held = fresh
            self._trust = held
        return held

    def changed(self) -> bool:
        """Has anything the reader set depends on changed (or is a periodic re-check due)?  The trust
        directory costs one stat per look (:class:`DirectoryWatch`)."""
        now = time.monotonic()
        return (self._signature() != self._seen or now - self._restated_at >= self.recheck_interval
                or (self._trust_watch is not None and self._trust_watch.changed(now)))


class RegistryThread:
    """A :class:`RegistryWatch` looked at every ``interval`` seconds on a thread of its own, so that neither a
    publisher's per-message path nor its loop ever waits for a listing of 100,000 files or a cold
    validation: the loop takes the new reader set when one is ready (:meth:`take`) and rekeys."""

    def __init__(self, watch: RegistryWatch, interval: float) -> None:
        self.watch, self.interval = watch, interval
        self._lock = threading.Lock()  # guards the hand-over of a loaded set
        self._ready: ReaderSet | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmqsec-registry", daemon=True)

    def start(self) -> "RegistryThread":
        """Start looking."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._load()
            except ZmqsecError as exc:  # e.g. the trust directory is being replaced: keep the current set, retry
                log.error("cannot reload readers (%s); keeping the current set", exc)
            except Exception:  # a bug must not silently end revocation
                log.exception("the registry watch failed; looking again in %.2f s", self.interval)

    def _load(self) -> None:
        """Load the reader set if anything it depends on changed, and hand it to :meth:`take`."""
        if self.watch.changed():  # the watch is this thread's alone; the lock is held only to hand over
            readers = self.watch.load()
            with self._lock:
                self._ready = readers

    @property
    def ready(self) -> bool:
        """Is a loaded reader set waiting to be taken?  (One attribute read: cheap enough for every message.)"""
        return self._ready is not None

    def take(self) -> ReaderSet | None:
        """The reader set loaded since the last call, or None."""
        if self._ready is None:
            return None
        with self._lock:
            readers, self._ready = self._ready, None
        return readers

    def stop(self) -> None:
        """Stop looking.  A load in progress (it only reads) is waited for a second at most: a daemon thread, it
        ends with the process."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)


CRL_WARNING = dt.timedelta(hours=6)  # a CRL this close to its nextUpdate is warned about


@dataclass
class SignerWatch:
    """The trust directory and the DN allow-list a message receiver judges signers by, re-read when either
    changes on disk (checked every ``interval`` seconds): a revocation, a refreshed CRL or a removed DN takes
    effect without a restart.  A CRL close to its nextUpdate is warned about, once per CRL."""

    trust_dir: Path
    dn_list: Path | None
    interval: float = 0.5
    trust: TrustStore | None = field(default=None, init=False)
    allowed: DnAllowList | None = field(default=None, init=False)
    _seen: tuple = field(default=(), init=False)
    _next: float = field(default=0.0, init=False)
    _next_crl_check: float = field(default=0.0, init=False)
    _warned: set = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._seen = self._signature()
        self.trust = TrustStore.from_directory(self.trust_dir)
        self.allowed = DnAllowList.load(self.dn_list) if self.dn_list else None
        self._check_crls()

    def _signature(self) -> tuple:
        return signature(self.trust_dir), signature(self.dn_list)

    def poll(self, now: float) -> bool:
        """Re-read what changed since the last look (at most every ``interval``); True if anything was."""
        if now < self._next:
            return False
        self._next = now + self.interval
        if now >= self._next_crl_check:  # time alone brings a CRL near its nextUpdate
            self._next_crl_check = now + 60.0
            self._check_crls()
        current = self._signature()
        if current == self._seen:
            return False
        try:
            trust = TrustStore.from_directory(self.trust_dir)
            allowed = DnAllowList.load(self.dn_list) if self.dn_list else None
        except ZmqsecError as exc:  # being rewritten: keep judging by the previous files, look again soon
            log_signers.error("cannot reload the signers' trust (%s); keeping the previous one", exc)
            return False
        self._seen, self.trust, self.allowed = current, trust, allowed
        log_signers.info("trust directory %s%s reloaded", self.trust_dir, f" and DN list {self.dn_list}" if self.dn_list else "")
        self._check_crls()
        return True

    def _check_crls(self) -> None:
        soon = dt.datetime.now(dt.timezone.utc) + CRL_WARNING
        for group in self.trust.crls.values():
            for crl in group:
                if crl.next_update_utc and crl.next_update_utc < soon and crl.fingerprint(hashes.SHA256()) not in self._warned:
                    self._warned.add(crl.fingerprint(hashes.SHA256()))
                    log_signers.warning("the CRL of %s is due to be replaced by %s (nextUpdate); refresh it, or every "
                                        "signer it covers is refused [crl-expired]", slash_dn(crl.issuer),
                                        f"{crl.next_update_utc:%Y-%m-%d %H:%M:%SZ}")
