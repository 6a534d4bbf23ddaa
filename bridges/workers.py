"""Worker processes of a bridge: one per core, spawned, and ending with the bridge.

One RSA-2048 operation costs a fraction of a millisecond of one core, and the
GIL keeps a thread from helping; a bridge's signing (stomp-out) and opening
(stomp-in) run on processes of our own instead.  They are spawned, so they
share no sockets or threads with the bridge; each receives what it needs (a
certificate and key) over its pipe at start, and nothing else of the bridge's;
and each ends with the bridge, also when the bridge is killed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

MIN_CHUNK = 8  # items per worker job at least (a job costs a round trip through the pool)

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Workers:
    """``count`` spawned processes, each set up by ``start(*args)`` once, that map a function over chunks."""

    def __init__(self, count: int, start: Callable[..., None], args: tuple) -> None:
        self.count = count
        self._pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                         initargs=(os.getpid(), start, args))

    def map(self, work: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> Callable[[], list[R]]:
        """Start ``work`` on chunks of ``items`` (one per worker, at least :data:`MIN_CHUNK` each); returns the call
        that waits for the results, in the order of ``items``."""
        size = max(MIN_CHUNK, -(-len(items) // self.count))
        futures = [self._pool.submit(work, items[i:i + size]) for i in range(0, len(items), size)]
        return lambda: [result for future in futures for result in future.result()]

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(cancel_futures=True)


def _start(parent: int, start: Callable[..., None], args: tuple) -> None:
    _die_with(parent)
    start(*args)


def _die_with(parent: int) -> None:
    """End this worker when the bridge ends, also by kill -9 (Linux: PR_SET_PDEATHSIG); a worker whose bridge is
    gone already ends at once.  Without this, a killed bridge left its workers waiting forever."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
