"""Key tree mode (docs/PROTOCOL.md §4.6): the epoch key wrapped once, under the root of a tree of keys.

A rekey brings the tree up to date with the reader set (:class:`zmqsec.protocol.tree.KeyTree`): each new node
key goes out wrapped under a child's key (CMS KEKRecipientInfo, AES key wrap) on that child's topic, and the
epoch key under the root's.  A reader learns its whole path once, from a *path envelope* wrapped for its
certificate (KeyTransRecipientInfo): made when a subscription to its leaf topic arrives, that is when it
connects, reconnects, or asks again because it missed an update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zmqsec.crypto.enveloped import CertificateRecipient, Kek
from zmqsec.errors import ZmqsecError
from zmqsec.keys.registry import ReaderSet
from zmqsec.protocol.announce import make_tree_announcement
from zmqsec.protocol.frames import TREE, encode, topic_for
from zmqsec.protocol.primitives import MAX_TREE_BITS
from zmqsec.protocol.rootarchive import RootRecord
from zmqsec.protocol.tree import KeyTree, tree_bits

from .distribution import Wrapping

PATH_GAP = 0.05  # one path envelope per leaf per this many seconds at most: a burst of subscriptions coalesces
PATHS_PER_TURN = 64  # path envelopes made per call of :meth:`TreeDistribution.due` (each costs a signature)
PATHS_KEPT = 4096  # path envelopes kept until the next update, the newest (about 3 kB each)


@dataclass
class TreeDistribution:
    """The key tree of one publisher run, and the path envelopes its readers asked for."""

    stream: bytes
    stream_id: bytes
    credential: object  # zmqsec.keys.pemfiles.Credential: signs every tree announcement
    transport: str
    rng: Callable[[int], bytes]
    wall_clock: Callable | None = None
    groups: dict = field(default_factory=dict)  # no group keys to re-announce (KeyDistribution)
    tree: KeyTree = field(init=False)

    def __post_init__(self) -> None:
        self.tree = KeyTree(self.stream, self.stream_id, self.rng)
        self._prefix = topic_for(self.stream, TREE)
        self._leaf_topic_bytes = len(self._prefix) + MAX_TREE_BITS + 1
        self._by_bits: dict[bytes, list[str]] = {}  # leaf topic bits (32) -> fingerprints (rarely more than one)
        self._owed: dict[bytes, None] = {}  # leaf topic bits whose readers asked for their path, in order
        self._made: dict[str, list[bytes]] = {}  # fingerprint -> its path envelope (until the next update), bounded
        self._sent: dict[bytes, float] = {}  # leaf topic bits -> when their path envelopes last went out
        self._readers: dict = {}  # fingerprint -> zmqsec.keys.registry.Reader
        self.tree_bits_of: dict[str, bytes] = {}  # fingerprint -> its leaf topic's bits

    def rekey(self, readers: ReaderSet, now: float) -> Wrapping:
        """Bring the tree up to date: the update's announcements, and the root key for the epoch envelope.  Costs
        about the changes, not the reader count (the reader set's fingerprints are a set already)."""
        now_in, before = readers.fingerprints, self._readers.keys()
        left = before - now_in
        joined = {r.fingerprint: r for r in readers if r.fingerprint not in before} if len(now_in - before) else {}
        try:
            update = self.tree.change({fp: tree_bits(fp) for fp in joined}, left)
        except ValueError as exc:
            raise ZmqsecError(f"stream {self.stream.decode(errors='replace')}: {exc}; restart the publisher") from None
        out, archive = [], None
        if update is not None:
            archive = RootRecord(update.generation, update.root.tag, update.root.key, tuple(bytes.fromhex(fp) for fp in joined),
                                 tuple(bytes.fromhex(fp) for fp in left))
            for fp in left:
                del self._readers[fp]
                bits = self.tree_bits_of.pop(fp)
                self._by_bits[bits].remove(fp)
                if not self._by_bits[bits]:
                    del self._by_bits[bits]
            for fp, reader in joined.items():
                self._readers[fp] = reader
                self.tree_bits_of[fp] = bits = self.tree.bits[fp][:MAX_TREE_BITS]
                self._by_bits.setdefault(bits, []).append(fp)
            self._made = {}
            self._owed = {b: None for b in self._owed if b in self._by_bits}
            for wrap in update.wraps:
                out.append(encode(make_tree_announcement(
                    self.stream, self.stream_id, wrap.under.tag, [wrap.carried], wrap.derived,
                    [Kek(wrap.under.kek_id, wrap.under.key)], self.credential, clock=self.wall_clock)))
        root = self.tree.key_of(self.tree.root)
        return Wrapping(out, [Kek(root.kek_id, root.key)], kind=TREE, archive=archive)

    def subscribed(self, topics: list[bytes]) -> None:
        """Subscriptions arrived: a reader's leaf topic (exactly) owes its path envelope."""
        for topic in topics:
            if len(topic) == self._leaf_topic_bytes and topic.startswith(self._prefix):
                bits = topic[len(self._prefix):-1]
                if bits in self._by_bits:
                    self._owed[bits] = None

    def due(self, now: float) -> list[list[bytes]]:
        """The path envelopes owed whose gap has passed (at most PATHS_PER_TURN of them)."""
        out: list[list[bytes]] = []
        for bits in list(self._owed):
            if len(out) >= PATHS_PER_TURN:
                break
            if now - self._sent.get(bits, -PATH_GAP) < PATH_GAP:
                continue
            del self._owed[bits]
            self._sent[bits] = now
            out += [self._path(fp) for fp in self._by_bits.get(bits, ())]
        if len(self._sent) > 4 * len(self._by_bits) + 1024:  # forget the gaps of long ago
            self._sent = {b: t for b, t in self._sent.items() if now - t < PATH_GAP}
        return out

    @property
    def deadline(self) -> float | None:
        """When :meth:`due` next has something to send."""
        if not self._owed:
            return None
        return min(self._sent.get(b, 0.0) for b in self._owed) + PATH_GAP

    def _path(self, fingerprint: str) -> list[bytes]:
        message = self._made.get(fingerprint)
        if message is None:
            reader = self._readers[fingerprint]
            keys = self.tree.path(fingerprint)
            if len(self._made) >= PATHS_KEPT:
                del self._made[next(iter(self._made))]  # the oldest: made again if its reader asks again
            message = self._made[fingerprint] = encode(make_tree_announcement(
                self.stream, self.stream_id, keys[0].tag, keys, (),
                [CertificateRecipient(reader.certificate, self.transport)], self.credential, clock=self.wall_clock))
        return message
