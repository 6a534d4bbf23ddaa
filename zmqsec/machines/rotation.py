"""Epochs and when they end (docs/PROTOCOL.md §6.1): the rotation policy and the state of one epoch."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zmqsec.crypto.enveloped import KeyTransport
from zmqsec.protocol.datacipher import DataKey


SINGLE_MODE, GROUPS_MODE, TREE_MODE = "single", "groups", "tree"  # [rotation] mode (docs/PROTOCOL.md §4)


class RekeyCause(enum.Enum):
    """Why a new epoch began."""

    START = "start"
    AGE = "rotation-age"
    MESSAGES = "rotation-messages"
    BYTES = "rotation-bytes"
    READERS = "readers-changed"


@dataclass(frozen=True)
class RotationPolicy:
    """When keys rotate and how often the publisher speaks up.  Times in seconds."""

    max_age: float = 3600.0
    max_messages: int = 1_000_000
    max_bytes: int = 1 << 30
    reannounce_interval: float = 1.0
    checkpoint_interval: float = 0.02  # the longest a frame waits for its checkpoint
    checkpoint_min_interval: float = 0.002  # the least time between checkpoints (more when signing is slow)
    checkpoint_max: int = 256
    transport: str = KeyTransport.OAEP
    group_size: int = 0  # 0: one envelope for every reader; N: reader groups of about N (docs/PROTOCOL.md §4.5)
    group_reannounce_interval: float = 4.0  # under a reader's key_timeout (5 s): a multicast joiner loses nothing
    mode: str = ""  # SINGLE_MODE, GROUPS_MODE or TREE_MODE (§4.6); "": groups if group_size, else single

    def __post_init__(self) -> None:
        if self.mode not in ("", SINGLE_MODE, GROUPS_MODE, TREE_MODE):
            raise ValueError(f"mode must be {SINGLE_MODE}, {GROUPS_MODE} or {TREE_MODE}, not {self.mode!r}")
        if self.mode == GROUPS_MODE and not self.group_size:
            raise ValueError("mode groups needs a group_size")
        if self.mode in (SINGLE_MODE, TREE_MODE) and self.group_size:
            raise ValueError(f"mode {self.mode} takes no group_size")
        if self.group_size < 0:
            raise ValueError("group_size must be 0 (single envelope) or positive")
        for name in ("max_age", "reannounce_interval", "checkpoint_interval", "group_reannounce_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.checkpoint_min_interval <= self.checkpoint_interval:
            raise ValueError("checkpoint_min_interval must be in 0..checkpoint_interval")
        if not 1 <= self.checkpoint_max <= 4096:
            raise ValueError("checkpoint_max must be in 1..4096")
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")


@dataclass
class Epoch:
    """One epoch of a stream: its number, data key, announcement, and how much it has carried."""

    number: int
    key: DataKey
    announcement: list[bytes]  # the encoded K frame, re-sent as it is
    started: float
    messages: int = 0
    bytes: int = 0

    def rotation_due(self, policy: RotationPolicy, now: float, incoming: int) -> RekeyCause | None:
        """Whether a payload of ``incoming`` bytes arriving ``now`` must go under a new key, and why."""
        if now - self.started >= policy.max_age:
            return RekeyCause.AGE
        if self.messages >= policy.max_messages:
            return RekeyCause.MESSAGES
        if self.bytes + incoming > policy.max_bytes and self.messages:
            return RekeyCause.BYTES
        return None
