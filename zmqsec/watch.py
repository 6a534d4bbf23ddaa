"""Cheap change detection for the files a long-running daemon depends on."""

from __future__ import annotations

import os
from pathlib import Path


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
