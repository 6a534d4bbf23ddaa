"""Durable file writes, below every layer: the one atomic-replace helper and the fsync of a
directory entry.  Readers of a file never see half of it, and a write is on disk (file and
directory) before the caller goes on to acknowledge anything."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` by writing a temporary file beside it and renaming it into place.

    The file is created with ``mode`` whatever the umask (0600 for private keys); with ``durable``
    the data and the directory entry are fsync'ed before this returns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make the entries of a directory (names added, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path, name: str) -> None:
    """Make a freshly added queue element durable: its files, its directory, and the directories above
    it up to ``root`` (a dirq element is a file or a directory of files under a hashed subdirectory)."""
    element = root / name
    paths = [*element.iterdir(), element] if element.is_dir() else [element]
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_directory(element.parent)
    fsync_directory(root)


def sync_filesystem(path: str | os.PathLike) -> None:
    """Sync the whole filesystem ``path`` is on (``syncfs``): one call makes a batch of small files durable,
    where an fsync per file and directory would cost a journal commit each."""
    syncfs = _syncfs()
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def _syncfs():
    """libc's syncfs (Linux), found in the running process; None elsewhere (then os.sync)."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
