"""The key tree (docs/PROTOCOL.md §4.6): its layout and its updates.  Pure: keys come from ``rng``, no CMS.

Readers are the leaves of a compressed binary trie over their *tree bits*: the
256 bits of the SHA-256 of their certificate, as ASCII '0'/'1' (distinct
certificates, distinct bits).  An interior node is named by its **tag**, the
longest prefix its readers share, and exists where they part; a leaf's tag is
its reader's bits.  A node's messages travel on the topic of its tag's first 32
bits.  Every node holds a key-encryption key made by an update (its
**generation**).  A reader holds the keys of its path: its leaf, the
interior nodes above it, and the root, under which each epoch key is wrapped.

An update (readers joined or left) gives every interior node whose reader set
changed a new key, bottom up: derived from the new key of its first changed
child (whose readers compute it themselves), or fresh when no child changed;
it is wrapped for each other child that holds established readers.  A reader
that left knows none of the new keys; one that joined learns its whole path
from a path envelope (§4.6), made when it asks.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

from .primitives import KEY_BYTES, MAX_GENERATION, MAX_TREE_KEYS, TREE_BITS, tree_derive, tree_kek_id

OLD_ROOTS = MAX_TREE_KEYS // 2  # earlier roots a path envelope carries at most (a path is about log2 N + 1 keys)


def _common(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of two bit strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def tree_bits(fingerprint_hex: str) -> bytes:
    """A reader's tree bits: its certificate's SHA-256 (hex, as the registry holds it) as 256 ASCII bits."""
    return format(int(fingerprint_hex, 16), f"0{TREE_BITS}b").encode()


@dataclass(frozen=True, slots=True)
class NodeKey:
    """A node's key: the node's tag (a leaf's: its reader's tree bits), the update that made it, the key."""

    tag: bytes
    generation: int
    key: bytes

    @property
    def kek_id(self) -> bytes:
        """The KEKRecipientInfo key identifier, ``t<tag>.<generation>``."""
        return tree_kek_id(self.tag, self.generation)

    def __repr__(self) -> str:  # never show key material
        return f"NodeKey(tag={self.tag!r}, generation={self.generation})"


@dataclass(frozen=True, slots=True)
class Wrap:
    """One message of an update: ``carried`` wrapped under ``under`` (a child's key), for the readers under that
    child; the keys of ``derived`` (tag, generation) follow from ``carried``, in order."""

    under: NodeKey
    carried: NodeKey
    derived: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True)
class Update:
    """What one update changed: its generation, the messages it sends, and the new root key."""

    generation: int
    wraps: list[Wrap]
    root: NodeKey


Child = bytes | str  # an interior node's tag, or a leaf's reader fingerprint


class KeyTree:
    """The key tree of one publisher run: layout and keys."""

    def __init__(self, name: bytes, stream_id: bytes, rng: Callable[[int], bytes]) -> None:
        self.name, self.stream_id, self.rng = name, stream_id, rng
        self.generation = 0
        self.bits: dict[str, bytes] = {}  # fingerprint -> tree bits
        self.leaves: dict[str, NodeKey] = {}  # fingerprint -> leaf key
        self.nodes: dict[bytes, NodeKey] = {}  # tag -> interior node key
        self.children: dict[bytes, list[Child]] = {}
        self.parent: dict[Child, bytes] = {}
        self.root: Child | None = None
        self.roots: dict[int, NodeKey] = {}  # generation -> the root key it made (the newest OLD_ROOTS + 1)

    def key_of(self, node: Child) -> NodeKey:
        """The key of an interior node (by tag) or a leaf (by fingerprint)."""
        return self.nodes[node] if isinstance(node, bytes) else self.leaves[node]

    def ancestors(self, node: Child) -> Iterator[bytes]:
        """The interior nodes above ``node``, from its parent up to the root."""
        while (node := self.parent.get(node)) is not None:
            yield node

    def path(self, fingerprint: str) -> list[NodeKey]:
        """A reader's keys: its leaf, every node above it up to the root, then the earlier roots of this run
        since the reader joined (newest first), under which earlier epoch keys were wrapped (§4.6)."""
        leaf = self.leaves[fingerprint]
        keys = [leaf] + [self.nodes[t] for t in self.ancestors(fingerprint)]
        current = self.key_of(self.root)
        older = [k for g, k in sorted(self.roots.items(), reverse=True) if g >= leaf.generation and k != current]
        return keys + older[:MAX_TREE_KEYS - len(keys)]

    def update(self, readers: Mapping[str, bytes]) -> Update | None:
        """The readers are now ``readers`` (fingerprint -> tree bits): :meth:`change` by who joined and left."""
        left = self.bits.keys() - readers.keys()
        return self.change({fp: readers[fp] for fp in readers.keys() - self.bits.keys()}, left)

    def change(self, joined: Mapping[str, bytes], left: Collection[str]) -> Update | None:
        """Readers (fingerprint -> tree bits) joined and readers (fingerprints) left: the new keys and the messages
        that carry them (None if nothing changed).  Costs about the changes times the depth, not the reader count
        (a change of more than a quarter lays the tree out anew).  Raises :class:`ValueError` if no reader would be
        left or generations are exhausted."""
        left = set(left) & self.bits.keys()
        joined = {fp: bits for fp, bits in joined.items() if fp not in self.bits or fp in left}
        if not joined and not left:
            return None
        remaining = len(self.bits) - len(left) + len(joined)
        if remaining <= 0:
            raise ValueError("a key tree needs at least one reader")
        if self.generation >= MAX_GENERATION:
            raise ValueError("key tree generations exhausted")
        self.generation = g = self.generation + 1
        bulk = self.root is None or len(joined) + len(left) > remaining // 4
        if not bulk:
            touched = {joined.get(fp) or self.bits[fp] for fp in joined.keys() | left}
            prefixes = {bits[:n] for bits in touched for n in range(len(bits) + 1)}
        for fp in left:
            if not bulk:
                self._remove(fp)
            del self.leaves[fp], self.bits[fp]
        for fp, bits in joined.items():
            self.bits[fp] = bits
            self.leaves[fp] = NodeKey(bits, g, self.rng(KEY_BYTES))
            if not bulk:
                self._insert(fp)
        if bulk:
            self._lay_out()
            changed = set(self.children)
            self.nodes = {t: k for t, k in self.nodes.items() if t in changed}
        else:
            changed = {t for t in prefixes if t in self.children}
            for tag in prefixes - changed:
                self.nodes.pop(tag, None)  # nodes that went with a reader that left
        fresh: dict[bytes, Child | None] = {}  # interior nodes with a new key -> the child it derives from
        established: set[bytes] = set()  # changed nodes with readers that were here before this update

        def holds_established(kid: Child) -> bool:
            if isinstance(kid, str):
                return kid not in joined
            return kid in established or kid not in changed  # an unchanged node: the same readers as before

        for tag in sorted(changed, key=len, reverse=True):  # children before parents
            kids = self.children[tag]
            if any(holds_established(k) for k in kids):
                established.add(tag)
            source = next((k for k in kids if k in fresh or k in joined), None)
            key = (tree_derive(self.key_of(source).key, self.name, self.stream_id, tag, g) if source is not None
                   else self.rng(KEY_BYTES))
            self.nodes[tag] = NodeKey(tag, g, key)
            fresh[tag] = source
        wraps = []
        for tag, source in fresh.items():
            derived, node = [], tag
            while (up := self.parent.get(node)) is not None and fresh.get(up) == node:
                derived.append((up, g))
                node = up
            carried = self.nodes[tag]
            for kid in self.children[tag]:
                if kid != source and holds_established(kid):
                    under = self.key_of(kid)
                    wraps.append(Wrap(under, carried, tuple(derived)))
        root = self.key_of(self.root)
        self.roots[g] = root
        while len(self.roots) > OLD_ROOTS + 1:
            del self.roots[min(self.roots)]
        return Update(g, wraps, root)

    def _tag(self, node: Child) -> bytes:
        return node if isinstance(node, bytes) else self.bits[node]

    def _replace(self, old: Child, new: Child | None) -> None:
        """Put ``new`` where ``old`` hangs (or at the root)."""
        up = self.parent.pop(old, None)
        if up is None:
            self.root = new
        else:
            kids = self.children[up]
            kids[kids.index(old)] = new
        if new is not None and up is not None:
            self.parent[new] = up
        elif new is not None:
            self.parent.pop(new, None)

    def _insert(self, fp: str) -> None:
        """Hang a new leaf in the trie: under the node its bits lead to, or beside the node they part from."""
        bits = self.bits[fp]
        node = self.root
        while True:
            tag = self._tag(node)
            if isinstance(node, bytes) and bits.startswith(tag):
                node = self.children[node][bits[len(tag)] - 48]  # 48: ASCII '0'
                continue
            common = _common(bits, tag)
            if common == len(bits):
                raise ValueError("two readers with the same tree bits")
            split = bits[:common]
            self._replace(node, split)
            kids: list[Child] = [fp, node] if bits[common] == 48 else [node, fp]
            self.children[split] = kids
            for kid in kids:
                self.parent[kid] = split
            return

    def _remove(self, fp: str) -> None:
        """Take a leaf out; a node left with one child is replaced by that child."""
        up = self.parent.get(fp)
        if up is None:
            self.root = None
            return
        kids = self.children[up]
        kids.remove(fp)
        del self.parent[fp]
        if len(kids) == 1:
            self._replace(up, kids[0])
            del self.children[up]

    def _lay_out(self) -> None:
        """The trie of the current readers (children before parents: every tag longer than its parent's)."""
        items = sorted((bits, fp) for fp, bits in self.bits.items())
        keys = [bits for bits, _ in items]
        values = [int(bits, 2) for bits in keys]
        width = len(keys[0])
        children: dict[bytes, list[Child]] = {}
        parent: dict[Child, bytes] = {}

        def build(lo: int, hi: int) -> Child:
            if hi - lo == 1:
                return items[lo][1]
            common = width - (values[lo] ^ values[hi - 1]).bit_length()
            if common == width:
                raise ValueError("two readers with the same tree bits")
            tag = keys[lo][:common]
            split = bisect.bisect_left(keys, tag + b"1", lo, hi)
            kids: list[Child] = [build(lo, split), build(split, hi)]
            children[tag] = kids
            for kid in kids:
                parent[kid] = tag
            return tag

        self.root = build(0, len(items))
        self.children, self.parent = children, parent
