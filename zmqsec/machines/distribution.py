"""How an epoch key reaches the readers (docs/PROTOCOL.md §4): a key distribution chooses the
recipients of each epoch envelope.

* :class:`SingleEnvelope` wraps the epoch key for every reader certificate.
* :class:`.keytree.TreeDistribution` wraps the epoch key once, under the root of a key tree
  whose updates cost about log N wraps (§4.6).
* :class:`ReaderGroups` splits the readers into groups of about ``group_size``; each group has a
  group key in its own envelope on its own topic, changed only when the group's membership
  changes, and the epoch key is wrapped once per group key (§4.5).

The sender calls :meth:`rekey` and never asks which one it holds; a new mode (a key tree) is a
new class here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from zmqsec.crypto.enveloped import CertificateRecipient, Kek, Recipient
from zmqsec.errors import ZmqsecError
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.protocol.announce import GroupKey, make_group_announcement
from zmqsec.protocol.frames import GROUP, encode
from zmqsec.protocol.groups import group_bits, partition
from zmqsec.protocol.primitives import KEY_BYTES, MAX_GENERATION
from zmqsec.protocol.rootarchive import RootRecord


@dataclass
class Wrapping:
    """What one rekey needs: announcements that must precede the epoch's own (new group keys, or key tree
    updates: frames of ``kind``), and the recipients of the epoch envelope."""

    announcements: list[list[bytes]]
    recipients: list[Recipient]
    kind: bytes = GROUP
    archive: RootRecord | None = None  # key tree mode: the update's root and who joined and left, to journal


class KeyDistribution(Protocol):
    """Chooses the recipients of each epoch's envelope."""

    groups: dict[bytes, "Group"]  # tag -> group (empty when the mode has no group keys)

    def rekey(self, readers: ReaderSet, now: float) -> Wrapping:
        """The wrapping of a new epoch key for ``readers``."""

    def subscribed(self, topics: list[bytes]) -> None:
        """Subscriptions to ``topics`` arrived (a mode that answers them keeps what it owes)."""

    def due(self, now: float) -> list[list[bytes]]:
        """Messages owed to subscribers now, besides re-announcements (a key tree's path envelopes)."""

    @property
    def deadline(self) -> float | None:
        """When :meth:`due` next has something."""


class _NothingOwed:
    """For modes whose subscribers are owed only re-announcements."""

    deadline = None

    def subscribed(self, topics: list[bytes]) -> None:
        """Nothing to keep."""

    def due(self, now: float) -> list[list[bytes]]:
        """Nothing owed."""
        return []


class _Recipients:
    """Reader certificates as envelope recipients, parsed once per certificate, not once per rekey."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self._by_fingerprint: dict[str, CertificateRecipient] = {}

    def of(self, readers: list[Reader]) -> list[Recipient]:
        cache = self._by_fingerprint
        out = []
        for reader in readers:
            recipient = cache.get(reader.fingerprint)
            if recipient is None:
                recipient = cache[reader.fingerprint] = CertificateRecipient(reader.certificate, self.transport)
            out.append(recipient)
        return out

    def keep_only(self, readers: ReaderSet) -> None:
        """Forget the recipients of readers that are gone."""
        for gone in set(self._by_fingerprint) - readers.fingerprints:
            del self._by_fingerprint[gone]


class SingleEnvelope(_NothingOwed):
    """Every epoch key wrapped for every reader certificate, in one envelope."""

    def __init__(self, transport: str) -> None:
        self.groups: dict[bytes, Group] = {}
        self._recipients = _Recipients(transport)

    def rekey(self, readers: ReaderSet, now: float) -> Wrapping:
        """All readers are recipients of the epoch envelope."""
        self._recipients.keep_only(readers)
        return Wrapping([], self._recipients.of(list(readers)))


@dataclass
class Group:
    """One reader group: its key, its members (certificate fingerprints) and its announcement."""

    key: GroupKey
    members: frozenset[str]
    message: list[bytes]  # the encoded G frame
    last_sent: float


@dataclass
class ReaderGroups(_NothingOwed):
    """Readers in groups of about ``group_size``, each with a group key (docs/PROTOCOL.md §4.5)."""

    stream: bytes
    stream_id: bytes
    credential: object  # zmqsec.keys.pemfiles.Credential: signs the group announcements
    group_size: int
    transport: str
    rng: Callable[[int], bytes]
    wall_clock: Callable | None = None
    groups: dict[bytes, Group] = field(default_factory=dict)
    generation: int = 0

    def __post_init__(self) -> None:
        self._recipients = _Recipients(self.transport)

    def rekey(self, readers: ReaderSet, now: float) -> Wrapping:
        """Regroup; a group whose membership changed gets a new key, announced to its members only.
        The epoch key is wrapped for the group keys."""
        self._recipients.keep_only(readers)
        bits = group_bits(len(readers), self.group_size)
        out, groups = [], {}
        for tag, members in sorted(partition(readers, bits).items()):
            membership = frozenset(r.fingerprint for r in members)
            old = self.groups.get(tag)
            if old is not None and old.members == membership:
                groups[tag] = old
                continue
            if self.generation >= MAX_GENERATION:
                raise ZmqsecError(f"stream {self.stream.decode(errors='replace')}: group key counter exhausted; "
                                  "restart the publisher")
            self.generation += 1
            key = GroupKey(tag, self.generation, self.rng(KEY_BYTES))
            message = encode(make_group_announcement(self.stream, self.stream_id, key, self._recipients.of(members),
                                                     self.credential, clock=self.wall_clock))
            groups[tag] = Group(key, membership, message, now)
            out.append(message)
        self.groups = groups
        return Wrapping(out, [Kek(g.key.key_id, g.key.key) for g in groups.values()])
