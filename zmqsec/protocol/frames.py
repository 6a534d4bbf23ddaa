"""The wire codec of protocol v2 (docs/PROTOCOL.md §3): ZeroMQ multipart messages <-> typed frames.

Pure and keyless: it knows nothing of sockets or keys.  Every ZeroMQ message
is two parts, a topic and a msgpack body::

    topic = stream name || 0x00 || kind            kind: D data, K key announcement, S checkpoint
    topic = stream name || 0x00 || G || tag || .   G group key announcement, tag = 0..16 ASCII bits
    topic = stream name || 0x00 || R               R run frame (where this publisher run comes from)
    topic = stream name || 0x00 || T || tag || .   T key tree announcement, tag = 0..32 ASCII bits
    D body = [1, stream_id, epoch, seq, ciphertext]
    K body = [2, stream_id, epoch, envelope, signature]        (version 1 still read)
    G body = [2, stream_id, generation, envelope, signature]   (version 1 still read)
    T body = [2, stream_id, generation, envelope, signature]   (version 1 still read)
    S body = [1, stream_id, first_seq, digests, signature]
    R body = [1, stream_id, previous_stream_id, previous_last_seq, signature]

Decoding is strict (exact arity, types, sizes); anything else raises
:class:`FrameError` whose ``reason`` names the defect.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import msgpack

from zmqsec.errors import RejectReason, ZmqsecError

from .primitives import (
    ANNOUNCEMENT_VERSION,
    ANNOUNCEMENT_VERSIONS,
    DIGEST_BYTES,
    MAX_ANNOUNCEMENT_FRAME,
    MAX_CHECKPOINT_DIGESTS,
    MAX_DATA_FRAME,
    MAX_EPOCH,
    MAX_GENERATION,
    MAX_GROUP_BITS,
    MAX_SEQ,
    MAX_TOPIC_BYTES,
    MAX_TREE_BITS,
    STREAM_ID_BYTES,
    VERSION,
)

DATA, ANNOUNCEMENT, CHECKPOINT, GROUP, RUN, TREE = b"D", b"K", b"S", b"G", b"R", b"T"
KINDS = (DATA, ANNOUNCEMENT, CHECKPOINT, GROUP, RUN, TREE)
_TAGGED = {GROUP: MAX_GROUP_BITS, TREE: MAX_TREE_BITS}  # kinds whose topic ends in a tag of ASCII bits and '.'

_TAG_END = b"."


class FrameError(ZmqsecError):
    """A ZeroMQ message is not a valid frame; ``reason`` says which rule it broke."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DataFrame:
    """One message of the stream, encrypted under the key of ``epoch``; ``seq`` numbers it within the stream."""

    topic: bytes  # the whole topic part, stream name + b"\0D"
    stream_id: bytes
    epoch: int
    seq: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Announcement:
    """A key announcement: the key of ``epoch`` wrapped for the readers (or reader groups), signed by the publisher."""

    topic: bytes
    stream_id: bytes
    epoch: int
    envelope: bytes  # DER CMS EnvelopedData of the key record
    signature: bytes  # DER CMS SignedData, detached, over ``envelope``
    version: int = ANNOUNCEMENT_VERSION  # 2: ``signature`` signs the header too (docs/PROTOCOL.md §4.3)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The publisher's signed digests of data frames ``first_seq`` onwards; a reader delivers a frame only once one covers it."""

    topic: bytes
    stream_id: bytes
    first_seq: int
    digests: bytes  # n * 32 bytes: SHA-256 of data frames first_seq .. first_seq + n - 1
    signature: bytes  # raw signature by the publisher's key (see primitives.checkpoint_signing_input)

    @property
    def count(self) -> int:
        """How many data frames the checkpoint covers."""
        return len(self.digests) // DIGEST_BYTES


@dataclass(frozen=True, slots=True)
class GroupAnnouncement:
    """A group key (KEK) for the readers whose certificate hash starts with ``tag`` (docs/PROTOCOL.md §4.5)."""

    topic: bytes  # stream name + b"\0G" + tag + b"."
    stream_id: bytes
    generation: int
    envelope: bytes  # DER CMS EnvelopedData of the group key record, one KeyTransRecipientInfo per member
    signature: bytes  # DER CMS SignedData, detached, over ``envelope``
    version: int = ANNOUNCEMENT_VERSION

    @property
    def tag(self) -> bytes:
        """The group's tag, taken from the topic."""
        return group_tag(self.topic)


@dataclass(frozen=True, slots=True)
class RunFrame:
    """Where a publisher run comes from (docs/PROTOCOL.md §10.2): the previous run's stream id (empty for a
    first run) and the last sequence number it sent, signed by the publisher."""

    topic: bytes  # stream name + b"\0R"
    stream_id: bytes
    previous_stream_id: bytes
    previous_last_seq: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class TreeAnnouncement:
    """Keys of the key tree (docs/PROTOCOL.md §4.6) for the readers under the node ``tag``: wrapped under that
    node's key (an update), or for one reader's certificate (its path)."""

    topic: bytes  # stream name + b"\0T" + tag + b"."
    stream_id: bytes
    generation: int  # the update that made the first key it carries
    envelope: bytes  # DER CMS EnvelopedData of a tree key record
    signature: bytes  # DER CMS SignedData, detached, over ``envelope``
    version: int = ANNOUNCEMENT_VERSION

    @property
    def tag(self) -> bytes:
        """The tag of the node whose readers it is for, taken from the topic."""
        return group_tag(self.topic)


Frame = DataFrame | Announcement | Checkpoint | GroupAnnouncement | RunFrame | TreeAnnouncement


def topic_for(stream: str | bytes, kind: bytes) -> bytes:
    """The topic part for a stream name and a frame kind."""
    name = stream.encode() if isinstance(stream, str) else stream
    if not name or len(name) > MAX_TOPIC_BYTES or b"\x00" in name:
        raise ValueError(f"stream name must be 1..{MAX_TOPIC_BYTES} bytes without NUL")
    return name + b"\x00" + kind


def group_topic(stream: str | bytes, tag: bytes) -> bytes:
    """The topic of a group key announcement: readers subscribe to it exactly (the '.' ends the tag)."""
    if len(tag) > MAX_GROUP_BITS or tag.strip(b"01"):
        raise ValueError(f"a group tag is 0..{MAX_GROUP_BITS} ASCII bits")
    return topic_for(stream, GROUP) + tag + _TAG_END


def tree_topic(stream: str | bytes, tag: bytes) -> bytes:
    """The topic of the tree announcements for the readers under node ``tag`` (the '.' ends the tag)."""
    if len(tag) > MAX_TREE_BITS or tag.strip(b"01"):
        raise ValueError(f"a tree node tag is 0..{MAX_TREE_BITS} ASCII bits")
    return topic_for(stream, TREE) + tag + _TAG_END


def subscription_ok(prefix: bytes, stream: bytes) -> bool:
    """Is ``prefix`` what a zmqsec peer of ``stream`` subscribes to (docs/PROTOCOL.md §9.1): everything, the
    whole stream, one frame kind, one reader group's or one tree node's topic?  Publishers apply nothing else."""
    head = stream + b"\x00"
    if prefix in (b"", head):
        return True
    if not prefix.startswith(head):
        return False
    rest = prefix[len(head):]
    if rest in (DATA, ANNOUNCEMENT, CHECKPOINT, RUN):
        return True
    bits = _TAGGED.get(rest[:1])
    return bits is not None and rest[-1:] == _TAG_END and len(rest) - 2 <= bits and not rest[1:-1].strip(b"01")


def relayable(prefix: bytes, streams: Collection[bytes] = ()) -> bool:
    """Is ``prefix`` a zmqsec subscription a relay passes upstream: everything, or what :func:`subscription_ok`
    allows for one of ``streams`` (for any stream when ``streams`` is empty)?"""
    if not prefix:
        return True
    if b"\x00" not in prefix:
        return False
    name = stream_name(prefix)
    return (not streams or name in streams) and 0 < len(name) <= MAX_TOPIC_BYTES and subscription_ok(prefix, name)


def stream_name(topic: bytes) -> bytes:
    """The stream name part of a topic (before the NUL); raises :class:`ValueError` if there is no NUL."""
    return topic[:topic.index(b"\x00")]


def group_tag(topic: bytes) -> bytes:
    """The tag of a group or tree announcement topic (between ``\\0G``/``\\0T`` and the final ``.``); the topic is
    not checked."""
    return topic[topic.index(b"\x00") + 2:-1]


def encode_data(topic: bytes, stream_id: bytes, epoch: int, seq: int, ciphertext: bytes) -> list[bytes]:
    """A data frame's two message parts, without building a :class:`DataFrame` (the per-message path)."""
    return [topic, msgpack.packb([VERSION, stream_id, epoch, seq, ciphertext], use_bin_type=True)]


def encode(frame: Frame) -> list[bytes]:
    """A frame's two message parts: topic and msgpack body."""
    if isinstance(frame, DataFrame):
        return encode_data(frame.topic, frame.stream_id, frame.epoch, frame.seq, frame.ciphertext)
    if isinstance(frame, Announcement):
        body = [frame.version, frame.stream_id, frame.epoch, frame.envelope, frame.signature]
    elif isinstance(frame, (GroupAnnouncement, TreeAnnouncement)):
        body = [frame.version, frame.stream_id, frame.generation, frame.envelope, frame.signature]
    elif isinstance(frame, RunFrame):
        body = [VERSION, frame.stream_id, frame.previous_stream_id, frame.previous_last_seq, frame.signature]
    else:
        body = [VERSION, frame.stream_id, frame.first_seq, frame.digests, frame.signature]
    return [frame.topic, msgpack.packb(body, use_bin_type=True)]


def _uint(value, limit: int, field: str) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise FrameError(RejectReason.BAD_FIELD, f"{field} must be an integer in 0..{limit}")
    return value


def _bin(value, field: str, size: int | None = None, limit: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise FrameError(RejectReason.BAD_FIELD, f"{field} must be binary")
    if size is not None and len(value) != size:
        raise FrameError(RejectReason.BAD_FIELD, f"{field} must be {size} bytes, not {len(value)}")
    if limit is not None and len(value) > limit:
        raise FrameError(RejectReason.OVERSIZED, f"{field} of {len(value)} bytes exceeds {limit}")
    return value


def _data_frame(topic: bytes, body: bytes) -> DataFrame | None:
    """The per-message path: a well-formed data frame in a few checks, or None (anything else, valid or not,
    takes :func:`decode`'s full path, which names what is wrong)."""
    if type(topic) is not bytes or topic.find(b"\x00") != len(topic) - 2 or not 3 <= len(topic) <= MAX_TOPIC_BYTES + 2 \
            or len(body) > MAX_DATA_FRAME:
        return None
    try:
        fields = msgpack.unpackb(body, raw=True, use_list=False, max_bin_len=MAX_DATA_FRAME, max_str_len=0,
                                 max_array_len=8, max_map_len=0, max_ext_len=0)
    except Exception:
        return None
    if type(fields) is not tuple or len(fields) != 5:
        return None
    version, stream_id, epoch, seq, ciphertext = fields
    if (version == VERSION and type(version) is int and type(stream_id) is bytes and len(stream_id) == STREAM_ID_BYTES
            and type(epoch) is int and 0 <= epoch <= MAX_EPOCH and type(seq) is int and 0 <= seq <= MAX_SEQ
            and type(ciphertext) is bytes):
        return DataFrame(topic, stream_id, epoch, seq, ciphertext)
    return None


def decode(parts: list[bytes]) -> Frame:
    """Parse one ZeroMQ multipart message into a frame, or raise :class:`FrameError`."""
    if len(parts) == 2 and parts[0][-2:] == b"\x00D" and (frame := _data_frame(parts[0], parts[1])) is not None:
        return frame
    return decode_strictly(parts)


def decode_strictly(parts: list[bytes]) -> Frame:
    """:func:`decode` by every rule one after the other, without the data frame shortcut (what the shortcut is
    tested against)."""
    if len(parts) != 2:
        raise FrameError(RejectReason.BAD_PARTS, f"expected 2 message parts, got {len(parts)}")
    topic, body = bytes(parts[0]), parts[1]
    end = topic.find(b"\x00")
    if not 1 <= end <= MAX_TOPIC_BYTES or len(topic) < end + 2:
        raise FrameError(RejectReason.BAD_TOPIC, "topic is not <stream name> NUL <kind>")
    kind, rest = topic[end + 1:end + 2], topic[end + 2:]
    if kind not in KINDS:
        raise FrameError(RejectReason.UNKNOWN_KIND, f"unknown frame kind {kind!r}")
    if kind in _TAGGED:
        tag, bits = rest[:-1], _TAGGED[kind]
        if rest[-1:] != _TAG_END or len(tag) > bits or tag.strip(b"01"):
            what = "group" if kind == GROUP else "tree"
            raise FrameError(RejectReason.BAD_TOPIC, f"{what} topic must end in 0..{bits} ASCII bits and '.'")
    elif rest:
        raise FrameError(RejectReason.BAD_TOPIC, "topic is not <stream name> NUL <kind>")
    limit = MAX_ANNOUNCEMENT_FRAME if kind in (ANNOUNCEMENT, GROUP, TREE) else MAX_DATA_FRAME
    if len(body) > limit:
        raise FrameError(RejectReason.OVERSIZED, f"frame body of {len(body)} bytes exceeds {limit}")
    try:
        fields = msgpack.unpackb(body, raw=True, use_list=True, strict_map_key=True,
                                 max_bin_len=limit, max_str_len=0, max_array_len=8, max_map_len=0, max_ext_len=0)
    except msgpack.ExtraData:
        raise FrameError(RejectReason.BAD_MSGPACK, "trailing bytes after the frame body") from None
    except Exception:
        raise FrameError(RejectReason.BAD_MSGPACK, "frame body is not valid msgpack") from None
    if not isinstance(fields, list) or not fields:
        raise FrameError(RejectReason.BAD_MSGPACK, "frame body is not a msgpack array")
    versions = ANNOUNCEMENT_VERSIONS if kind in (ANNOUNCEMENT, GROUP, TREE) else (VERSION,)
    if type(fields[0]) is not int or fields[0] not in versions:
        raise FrameError(RejectReason.UNKNOWN_VERSION,
                         f"{kind.decode()} frame version {fields[0]!r} unsupported (this reads {versions})")
    if len(fields) != 5:
        raise FrameError(RejectReason.BAD_MSGPACK, f"frame body has {len(fields)} fields, expected 5")
    stream_id = _bin(fields[1], "stream_id", size=STREAM_ID_BYTES)
    if kind == DATA:
        return DataFrame(topic, stream_id, _uint(fields[2], MAX_EPOCH, "epoch"), _uint(fields[3], MAX_SEQ, "seq"),
                         _bin(fields[4], "ciphertext", limit=MAX_DATA_FRAME))
    if kind in (ANNOUNCEMENT, GROUP, TREE):
        cls, limit = {ANNOUNCEMENT: (Announcement, MAX_EPOCH), GROUP: (GroupAnnouncement, MAX_GENERATION),
                      TREE: (TreeAnnouncement, MAX_GENERATION)}[kind]
        return cls(topic, stream_id, _uint(fields[2], limit, "epoch" if kind == ANNOUNCEMENT else "generation"),
                   _bin(fields[3], "envelope", limit=MAX_ANNOUNCEMENT_FRAME),
                   _bin(fields[4], "signature", limit=1024 * 1024), fields[0])
    if kind == RUN:
        previous = _bin(fields[2], "previous_stream_id", limit=STREAM_ID_BYTES)
        if len(previous) not in (0, STREAM_ID_BYTES):
            raise FrameError(RejectReason.BAD_FIELD, f"previous_stream_id must be empty or {STREAM_ID_BYTES} bytes")
        return RunFrame(topic, stream_id, previous, _uint(fields[3], MAX_SEQ, "previous_last_seq"),
                        _bin(fields[4], "signature", limit=16 * 1024))
    digests = _bin(fields[3], "digests", limit=MAX_CHECKPOINT_DIGESTS * DIGEST_BYTES)
    if not digests or len(digests) % DIGEST_BYTES:
        raise FrameError(RejectReason.BAD_FIELD, "checkpoint digests must be a non-empty multiple of 32 bytes")
    first_seq = _uint(fields[2], MAX_SEQ, "first_seq")
    return Checkpoint(topic, stream_id, first_seq, digests, _bin(fields[4], "signature", limit=16 * 1024))
