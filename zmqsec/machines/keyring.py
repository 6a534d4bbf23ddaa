"""The keys a reader holds for one publisher run (docs/PROTOCOL.md §4.4-§4.6): epoch keys, the
group keys of its reader group, the keys of its key tree path, and the verdicts on announcements it
already examined."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import msgpack

from zmqsec.crypto import cms, enveloped

from zmqsec.protocol.announce import GroupKey, TreeKeys
from zmqsec.protocol.datacipher import DataKey
from zmqsec.protocol.frames import Announcement, GroupAnnouncement, TreeAnnouncement, encode
from zmqsec.protocol.primitives import MAX_GENERATION, tree_derive
from zmqsec.protocol.tree import NodeKey

from .events import ReceiverPolicy

VERDICTS_KEPT = 64  # announcement verdicts remembered per run (re-announcements cost nothing)


def announcement_id(frame: Announcement | GroupAnnouncement | TreeAnnouncement) -> bytes:
    """Identifies an announcement by everything it carries, header included (msgpack delimits every field):
    a copy under another topic or epoch/generation is another announcement, and its refusal poisons nothing."""
    return hashlib.sha256(msgpack.packb(encode(frame))).digest()


def _bounded_put(cache: OrderedDict, key, value, limit: int) -> None:
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)


class Keyring:
    """Epoch keys (the newest ``keep_epochs``), group keys (the highest ``keep_group_keys`` generations,
    each bound to the certificate that signed it), announcement verdicts, and the epoch announcements
    waiting for our group's key."""

    def __init__(self, policy: ReceiverPolicy) -> None:
        self.policy = policy
        self._epochs: dict[int, DataKey] = {}
        self._groups: dict[bytes, tuple[GroupKey, object]] = {}  # KEK id -> (key, signer certificate)
        self._tree: dict[bytes, tuple[NodeKey, object]] = {}  # KEK id -> (key of our path, signer certificate)
        self.tree_wanted: float | None = None  # since when we miss a key of our key tree path
        self.tree_asked = float("-inf")  # when we last asked for our path
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self._awaiting_group: list[tuple[Announcement, bytes, float]] = []
        self._reported: OrderedDict[bytes, None] = OrderedDict()  # announcements refused for want of a group key

    # -- epoch keys ---------------------------------------------------------------------

    def key(self, epoch: int) -> DataKey | None:
        """The data key of ``epoch``, if held."""
        return self._epochs.get(epoch)

    def has_key(self, epoch: int) -> bool:
        """Is the key of ``epoch`` held?"""
        return epoch in self._epochs

    def add_key(self, epoch: int, key: bytes) -> bool:
        """Hold an epoch key; False if it was held already.  The oldest epoch goes, not the oldest arrival."""
        if epoch in self._epochs:
            return False
        self._epochs[epoch] = DataKey(key)
        while len(self._epochs) > self.policy.keep_epochs:
            del self._epochs[min(self._epochs)]
        return True

    def far_ahead(self, epoch: int, ahead: int) -> bool:
        """Is ``epoch`` more than ``ahead`` above every key held (and some key is)?  No publisher gets there
        without announcing the epochs between."""
        return bool(self._epochs) and epoch > max(self._epochs) + ahead

    def older_than_every_key(self, epoch: int) -> bool:
        """A full ring and an epoch below all of it: a replay, refused without cryptography."""
        return len(self._epochs) >= self.policy.keep_epochs and epoch < min(self._epochs)

    # -- verdicts -----------------------------------------------------------------------

    def settled(self, fingerprint: bytes, held: bool) -> bool:
        """Was this exact announcement refused before, or accepted and its key still ``held``?"""
        verdict = self._verdicts.get(fingerprint)
        return verdict is not None and (not verdict or held)

    def remember(self, fingerprint: bytes, accepted: bool) -> None:
        """Keep the verdict on an announcement (bounded)."""
        _bounded_put(self._verdicts, fingerprint, accepted, VERDICTS_KEPT)

    # -- group keys ----------------------------------------------------------------------

    def has_group_key(self, key_id: bytes) -> bool:
        """Is the group key ``key_id`` held?"""
        return key_id in self._groups

    def older_than_every_group_key(self, generation: int) -> bool:
        """A full ring and a generation below all of it: a replay, refused without cryptography."""
        return (len(self._groups) >= self.policy.keep_group_keys
                and generation < min(g.generation for g, _ in self._groups.values()))

    def add_group_key(self, group: GroupKey, signer) -> None:
        """Hold a group key; the lowest generation goes, not the oldest arrival."""
        self._groups[group.key_id] = (group, signer)
        while len(self._groups) > self.policy.keep_group_keys:
            del self._groups[min(self._groups, key=lambda kid: self._groups[kid][0].generation)]

    def group_keys_from(self, signer) -> dict[bytes, bytes]:
        """KEK id -> key of the group keys and key tree keys ``signer`` sent: another allowed publisher cannot
        shadow them."""
        keys = {kid: g.key for kid, (g, s) in self._groups.items() if s == signer}
        keys.update((kid, k.key) for kid, (k, s) in self._tree.items() if s == signer)
        return keys

    # -- key tree keys (§4.6) ------------------------------------------------------------

    def catch_up_due(self, now: float) -> bool:
        """Have we missed a key of our path for ``catch_up_after``, and not asked for it for ``catch_up_gap``?
        (True once per ask.)"""
        policy = self.policy
        if (self.tree_wanted is None or now - self.tree_wanted < policy.catch_up_after
                or now - self.tree_asked < policy.catch_up_gap):
            return False
        self.tree_wanted, self.tree_asked = None, now
        return True

    def wanted_root(self) -> int:
        """The lowest generation of the tree roots that the epoch announcements waiting for a key are wrapped
        under (0: none waits; a missed update of our path is what we miss)."""
        wanted = []
        for frame, _, _ in self._awaiting_group:
            try:
                kek_ids = enveloped.recipients(frame.envelope).kek_ids
            except cms.CmsError:
                continue
            # An epoch envelope in tree mode is wrapped under the root only: t<its tag>.<generation>
            wanted += [n for k in kek_ids if k[:1] == b"t" and (g := k.rpartition(b".")[2]).isdigit()
                       and len(g) <= 10 and (n := int(g)) <= MAX_GENERATION]
        return min(wanted, default=0)

    def tree_key_ids(self) -> set[bytes]:
        """The KEK ids of the key tree keys held."""
        return set(self._tree)

    def add_tree_keys(self, got: TreeKeys, bits: bytes, name: bytes, stream_id: bytes, signer) -> int:
        """Hold the keys of our path (tags that are prefixes of our tree ``bits``) that ``got`` carries or lets us
        derive.  Past ``keep_tree_keys``, superseded keys (a newer one of the same node is held) go first, lowest
        generation first: the keys in use (our leaf's may be old) stay.  Returns how many were new."""
        keys = list(got.keys)
        node = keys[0]
        for tag, generation in got.derived:  # each from the one before, starting with the first key carried
            node = NodeKey(tag, generation, tree_derive(node.key, name, stream_id, tag, generation))
            keys.append(node)
        new = 0
        for key in keys:
            if bits.startswith(key.tag) and key.kek_id not in self._tree:
                self._tree[key.kek_id] = (key, signer)
                new += 1
        excess = len(self._tree) - self.policy.keep_tree_keys
        if excess > 0:
            newest: dict[bytes, int] = {}
            for key, _ in self._tree.values():
                newest[key.tag] = max(newest.get(key.tag, 0), key.generation)
            by_age = sorted(self._tree, key=lambda kid: (self._tree[kid][0].generation == newest[self._tree[kid][0].tag],
                                                          self._tree[kid][0].generation))
            for kid in by_age[:excess]:
                del self._tree[kid]
        return new

    def wait_for_group_key(self, frame: Announcement, fingerprint: bytes, now: float) -> None:
        """Hold an epoch announcement wrapped only for group keys we do not have yet."""
        if all(f != fingerprint for _, f, _ in self._awaiting_group):
            self._awaiting_group.append((frame, fingerprint, now))
            del self._awaiting_group[:-self.policy.max_awaiting_group]

    def take_waiting(self) -> list[tuple[Announcement, float]]:
        """The epoch announcements that waited for a group key (to be tried again)."""
        waiting, self._awaiting_group = self._awaiting_group, []
        return [(frame, arrived) for frame, _, arrived in waiting]

    def expire_waiting(self, now: float) -> list[Announcement]:
        """The waits that timed out, each reported once per announcement (re-announcements stay quiet)."""
        timeout = self.policy.key_timeout
        expired = [e for e in self._awaiting_group if now - e[2] >= timeout]
        if not expired:
            return []
        self._awaiting_group = [e for e in self._awaiting_group if now - e[2] < timeout]
        report = []
        for frame, fingerprint, _ in expired:
            if fingerprint not in self._reported:
                _bounded_put(self._reported, fingerprint, None, VERDICTS_KEPT)
                report.append(frame)
        return report
