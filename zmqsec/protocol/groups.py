"""Reader groups for large registries (docs/PROTOCOL.md §4.5).  Pure: no keys, no sockets.

A reader's group is named by the first ``bits`` bits of the SHA-256 of its
certificate, written as ASCII '0'/'1' (the *tag*).  The publisher picks
``bits`` from the registry size so that groups hold about ``group_size``
readers; a reader does not need to know ``bits``: it subscribes to the group
topic of every prefix of its own hash, and exactly one of them is in use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from cryptography import x509

from zmqsec.keys.registry import Reader, fingerprint

from .frames import ANNOUNCEMENT, CHECKPOINT, DATA, RUN, group_topic, topic_for, tree_topic
from .primitives import MAX_GROUP_BITS, MAX_TREE_BITS
from .tree import tree_bits


def reader_bits(certificate: x509.Certificate) -> bytes:
    """The first 16 bits of SHA-256(certificate DER), as ASCII bits: every tag the reader can have is a prefix."""
    return fingerprint_bits(fingerprint(certificate))


def fingerprint_bits(fingerprint_hex: str) -> bytes:
    """:func:`reader_bits` from the certificate's SHA-256 fingerprint (hex), which the registry already holds."""
    return format(int(fingerprint_hex[:4], 16), "016b").encode()


def group_bits(readers: int, group_size: int) -> int:
    """The fewest tag bits that bring the expected group size down to ``group_size``."""
    if group_size < 1:
        raise ValueError("group_size must be positive")
    if readers <= group_size:
        return 0
    return min(MAX_GROUP_BITS, math.ceil(math.log2(readers / group_size)))


def partition(readers: Iterable[Reader], bits: int) -> dict[bytes, list[Reader]]:
    """Readers by tag; tags with no reader are absent."""
    groups: dict[bytes, list[Reader]] = {}
    for reader in readers:
        groups.setdefault(fingerprint_bits(reader.fingerprint)[:bits], []).append(reader)
    return groups


def kek_id(tag: bytes, generation: int) -> bytes:
    """The KEKRecipientInfo key identifier of a group key: ``<tag>.<generation>`` in ASCII."""
    return tag + b"." + str(generation).encode()


def reader_topics(stream: str | bytes, certificate: x509.Certificate) -> list[bytes]:
    """The subscriptions of a reader: data, checkpoints, epoch announcements, run frames, its possible
    group topics and the topics of the key tree nodes its path may have (docs/PROTOCOL.md §4.6).

    A message reaches the reader iff its topic starts with one of these (ZeroMQ prefix matching;
    the '.' that ends a tag keeps one group's or node's topic from matching another's).
    """
    bits, path = reader_bits(certificate), tree_bits(fingerprint(certificate))
    return ([topic_for(stream, kind) for kind in (DATA, CHECKPOINT, ANNOUNCEMENT, RUN)]
            + [group_topic(stream, bits[:n]) for n in range(MAX_GROUP_BITS + 1)]
            + [tree_topic(stream, path[:n]) for n in range(MAX_TREE_BITS + 1)])


def leaf_topic(stream: str | bytes, certificate: x509.Certificate) -> bytes:
    """The topic of the reader's key tree leaf: a new subscription to it asks the publisher for the reader's
    path envelope (docs/PROTOCOL.md §4.6)."""
    return tree_topic(stream, tree_bits(fingerprint(certificate))[:MAX_TREE_BITS])
