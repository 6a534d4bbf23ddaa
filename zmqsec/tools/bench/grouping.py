"""Single-envelope, grouped or key tree distribution: which this tree has, and what each means for a run."""

from __future__ import annotations

import dataclasses
import importlib.util

from zmqsec.machines.sender import RotationPolicy

from .config import STREAM


def grouped_api() -> bool:
    """Does this tree have the grouped key hierarchy (``RotationPolicy(group_size=...)``, ``zmqsec.groups``)?"""
    return ("group_size" in {f.name for f in dataclasses.fields(RotationPolicy)}
            and importlib.util.find_spec("zmqsec.protocol.groups") is not None)


def tree_api() -> bool:
    """Does this tree have key tree mode (``RotationPolicy(mode="tree")``)?"""
    return "mode" in {f.name for f in dataclasses.fields(RotationPolicy)}


def policy(group_size: int, tree: bool = False) -> RotationPolicy:
    """The rotation policy of a run: a key tree, grouped with ``group_size`` readers per group, or (0)
    single-envelope."""
    if tree:
        return RotationPolicy(mode="tree")
    return RotationPolicy(group_size=group_size) if group_size else RotationPolicy()


def reader_topics(group_size: int, certificate, tree: bool = False) -> tuple[bytes, ...]:
    """Subscription prefixes of a reader: the whole stream, or its groups' and key tree nodes' topics in grouped
    and tree mode."""
    if not group_size and not tree:
        return (STREAM.encode() + b"\x00",)
    from zmqsec.protocol import groups

    return tuple(groups.reader_topics(STREAM, certificate))


def auto_group_size(readers: int) -> int:
    """About the square root of the reader count: balances the group-key envelope (one CMS
    recipient per group member) against the epoch envelope (one wrap per group)."""
    return max(2, round(readers ** 0.5))
