"""What the reader's state machine tells its driver (docs/PROTOCOL.md §6.2), and its bounds."""

from __future__ import annotations

from dataclasses import dataclass

from zmqsec.errors import RejectReason, Scope, scoped


@dataclass(frozen=True)
class Delivered:
    """A verified message, in order: deliver it."""

    stream: bytes
    stream_id: bytes
    epoch: int
    seq: int
    payload: bytes
    publisher_dn: str

    @property
    def message_id(self) -> str:
        """Unique per message and stable on every retry: ``<stream id hex>-<seq>`` (SSM's empa-id)."""
        return f"{self.stream_id.hex()}-{self.seq}"


@dataclass(frozen=True)
class Rejected:
    """Something was refused: count it under :attr:`name`, log it, carry on."""

    reason: RejectReason
    detail: str
    stream_id: bytes | None = None
    seq: int | None = None
    scope: Scope | None = None  # what part of an announcement the reason is about

    @property
    def name(self) -> str:
        """The counter name: ``forged``, ``publisher-revoked``."""
        return scoped(self.scope, self.reason) if self.scope else str(self.reason)


@dataclass(frozen=True)
class Gap:
    """Sequence numbers ``first_missing`` .. ``first_missing + count - 1`` were never delivered."""

    stream_id: bytes
    first_missing: int
    count: int


@dataclass(frozen=True)
class Missing:
    """Sequence numbers ``first..last`` of a run are needed before delivery can go on: repair them
    (docs/PROTOCOL.md §10.5)."""

    stream: bytes
    stream_id: bytes
    first: int
    last: int


@dataclass(frozen=True)
class Restarted:
    """The stream's publisher started a new run (a new stream id) and this reader follows it."""

    stream: bytes
    old_stream_id: bytes
    new_stream_id: bytes
    publisher_dn: str


@dataclass(frozen=True)
class KeyAccepted:
    """An epoch key was verified, unwrapped and confirmed."""

    stream_id: bytes
    epoch: int
    publisher_dn: str


@dataclass(frozen=True)
class GroupKeyAccepted:
    """Our reader group's key was verified, unwrapped and confirmed."""

    stream_id: bytes
    tag: bytes
    generation: int


@dataclass(frozen=True)
class RunLinked:
    """A run's signed run frame: it follows ``previous_stream_id`` (empty: none), which sent up to
    ``previous_last_seq`` (docs/PROTOCOL.md §10.2)."""

    stream: bytes
    stream_id: bytes
    previous_stream_id: bytes
    previous_last_seq: int


@dataclass(frozen=True)
class TreeKeysAccepted:
    """Keys of our key tree path arrived (docs/PROTOCOL.md §4.6): ``keys`` new ones, the newest of generation
    ``generation``."""

    stream_id: bytes
    generation: int
    keys: int


@dataclass(frozen=True)
class CatchUp:
    """We miss keys of our key tree path (an update went by while we were away, or the run's publisher is gone):
    ask the publisher for our path again, by subscribing to our leaf topic anew, and its replay server for the
    run's roots from ``generation`` on (0: no epoch announcement waits for a root) (docs/PROTOCOL.md §4.6)."""

    stream: bytes
    stream_id: bytes
    generation: int = 0


Event = (Delivered | Rejected | Gap | Missing | Restarted | KeyAccepted | GroupKeyAccepted | RunLinked
         | TreeKeysAccepted | CatchUp)


@dataclass(frozen=True)
class ReceiverPolicy:
    """Bounds on what a reader holds while it waits (times in seconds)."""

    hold_timeout: float = 5.0  # a decrypted frame waits this long for its checkpoint
    key_timeout: float = 5.0  # a frame waits this long for its epoch's key
    max_held: int = 100_000  # frames held in all (pending + awaiting key)
    max_held_bytes: int = 64 * 1024 * 1024  # their bytes in all (ciphertext awaiting a key, payloads pending)
    epochs_ahead: int = 16  # data under an epoch this far above every key held is refused at once
    keep_epochs: int = 4  # old epoch keys kept for stragglers
    max_streams: int = 8  # unknown stream identities buffered at once
    max_candidates: int = 4  # different frames claiming one sequence number
    keep_group_keys: int = 4  # group keys kept (ours change when our group's membership does)
    max_awaiting_group: int = 4  # epoch announcements held until our group's (or key tree path's) key arrives
    keep_tree_keys: int = 256  # key tree keys kept: our path (up to 34) over several generations
    catch_up_after: float = 0.25  # an announcement waits this long for a tree key before we ask for our path
    catch_up_gap: float = 1.0  # we ask for our path at most this often per run
    repair_timeout: float = 0.0  # a hole is waited for this long while replay repairs it (0: no replay)
