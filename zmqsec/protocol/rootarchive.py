"""The publisher's archive of its key tree roots (docs/PROTOCOL.md §4.6, §10.3): what it needs to give a reader
the roots of a past run.

In key tree mode every epoch key is wrapped under the tree's root of the moment, and only the readers who were
in the tree then can open it.  So that a reader that was away (or restarted) while a run lived can still read
that run from the journal, the publisher keeps, per run and update, the root key the update made and who joined
and left, sealed with AES-256-GCM under its archive key; from them it tells which roots a reader is entitled to
(those of the updates while it was in the tree).  Pure: no files, no clock; randomness comes from the caller.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zmqsec.errors import ZmqsecError

from .primitives import KEY_BYTES, MAX_TREE_KEYS
from .tree import NodeKey

LABEL_ROOTS = b"zmqsec/v2/tree-roots"
NONCE_BYTES = 12
FINGERPRINT_BYTES = 32  # a reader's tree bits as raw bytes: the SHA-256 of its certificate


class ArchiveError(ZmqsecError):
    """A sealed root record does not open or parse (damaged, or sealed under another archive key)."""


@dataclass(frozen=True)
class RootRecord:
    """One update of a run's key tree: the root key it made (the root's tag: the bits every reader shares), the
    readers (fingerprints, 32 bytes) that joined and left."""

    generation: int
    tag: bytes
    root: bytes
    joined: tuple[bytes, ...]
    left: tuple[bytes, ...]

    def __repr__(self) -> str:  # never show key material
        return f"RootRecord(generation={self.generation}, joined={len(self.joined)}, left={len(self.left)})"


def _associated(stream_id: bytes, generation: int) -> bytes:
    return LABEL_ROOTS + stream_id + struct.pack(">I", generation)


def seal(key: bytes, stream_id: bytes, record: RootRecord, rng: Callable[[int], bytes]) -> bytes:
    """``nonce || AES-256-GCM(key, nonce, msgpack([tag, root, joined, left]), label || stream id ||
    u32(generation))``."""
    nonce = rng(NONCE_BYTES)
    plain = msgpack.packb([record.tag, record.root, list(record.joined), list(record.left)], use_bin_type=True)
    return nonce + AESGCM(key).encrypt(nonce, plain, _associated(stream_id, record.generation))


def unseal(key: bytes, stream_id: bytes, generation: int, sealed: bytes) -> RootRecord:
    """The record sealed for (run, generation); raises :class:`ArchiveError`."""
    try:
        plain = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated(stream_id, generation))
        tag, root, joined, left = msgpack.unpackb(plain, raw=True, use_list=False)
    except (InvalidTag, ValueError, TypeError):
        raise ArchiveError(f"run {stream_id.hex()} generation {generation}: the sealed root record does not open "
                           "(damaged, or sealed under another archive key)") from None
    if (type(root) is not bytes or len(root) != KEY_BYTES or type(tag) is not bytes or tag.strip(b"01")
            or not all(type(f) is bytes and len(f) == FINGERPRINT_BYTES for f in (*joined, *left))):
        raise ArchiveError(f"run {stream_id.hex()} generation {generation}: the root record is malformed")
    return RootRecord(generation, tag, root, joined, left)


class RootHistory:
    """A run's roots and, for every reader that was ever in its tree, the updates it was in the tree for."""

    def __init__(self, records: Iterable[RootRecord]) -> None:
        self.roots: dict[int, NodeKey] = {}
        self._generations: list[int] = []  # sorted
        self._spans: dict[bytes, list[list[int]]] = {}  # fingerprint -> [[joined at, left at (0: still in)], ...]
        for record in sorted(records, key=lambda r: r.generation):
            self.roots[record.generation] = NodeKey(record.tag, record.generation, record.root)
            for fingerprint in record.left:
                spans = self._spans.get(fingerprint)
                if spans and spans[-1][1] == 0:
                    spans[-1][1] = record.generation
            for fingerprint in record.joined:
                self._spans.setdefault(fingerprint, []).append([record.generation, 0])
        self._generations = sorted(self.roots)

    @property
    def newest(self) -> int:
        """The newest generation held (0: none)."""
        return self._generations[-1] if self._generations else 0

    def entitled(self, fingerprint: bytes, first: int, limit: int = MAX_TREE_KEYS) -> list[NodeKey]:
        """The roots of generation ``first`` on that the reader held (it was in the tree from the update that
        made them until an update that took it out), oldest first, at most ``limit``."""
        spans = self._spans.get(fingerprint)
        if not spans:
            return []
        out = []
        for generation in self._generations[bisect.bisect_left(self._generations, first):]:
            if any(joined <= generation and (left == 0 or generation < left) for joined, left in spans):
                out.append(self.roots[generation])
                if len(out) == limit:
                    break
        return out
