"""The replay protocol's messages (docs/PROTOCOL.md §10.4): pure codec, strict, size-limited.

Every message is one msgpack array in one ZeroMQ part (after the ROUTER's
routing id); a replayed frame carries its two original parts after its
header.  Decoding raises :class:`ReplayMessageError` with the reason the
server sends back (``bad-request``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from zmqsec.errors import ZmqsecError

from .primitives import MAX_GENERATION, MAX_GROUP_BITS, MAX_SEQ, MAX_TOPIC_BYTES, STREAM_ID_BYTES, VERSION

MAX_REQUEST_BYTES = 1024
MAX_CREDIT = 1 << 20
MAX_ID = 2**32 - 1
MAX_REASON = 256

REQUEST, CREDIT, CANCEL, ROOTS = "request", "credit", "cancel", "roots"
FRAME, END, ERROR = "frame", "end", "error"

# error reasons
BAD_REQUEST, UNKNOWN_RUN, BUSY = "bad-request", "unknown-run", "busy"
NO_KEYS, NOT_A_READER = "no-keys", "not-a-reader"  # answers to a roots request

TREE_BITS = 256  # a reader's key tree bits (docs/PROTOCOL.md §4.6), as a roots request names it


class ReplayMessageError(ZmqsecError):
    """A replay message is malformed; ``request_id`` is set when it could be read."""

    def __init__(self, message: str, request_id: int = 0) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """Replay ``first..last`` (``last`` 0: to the end) of run ``run`` of ``stream``; ``tags`` is the reader's
    16 group bits (or empty); ``credit`` how many frames it takes before it grants more."""

    id: int
    stream: bytes
    run: bytes
    first: int
    last: int
    tags: bytes
    credit: int


@dataclass(frozen=True)
class Roots:
    """Send the reader whose key tree bits are ``bits`` (256 ASCII bits) the roots of run ``run`` of ``stream``
    from generation ``generation`` on that it is entitled to, in a path envelope for its certificate
    (docs/PROTOCOL.md §4.6, §10.4)."""

    id: int
    stream: bytes
    run: bytes
    bits: bytes
    generation: int


@dataclass(frozen=True)
class Credit:
    """The client takes ``credit`` more frames of request ``id``."""

    id: int
    credit: int


@dataclass(frozen=True)
class Cancel:
    """The client wants nothing more of request ``id``."""

    id: int


@dataclass(frozen=True)
class End:
    """Request ``id`` is served up to ``served_last``; the journal holds ``available_first..available_last``
    of the run now."""

    id: int
    served_last: int
    available_first: int
    available_last: int


@dataclass(frozen=True)
class Error:
    """Request ``id`` was refused, with a reason (``bad-request``, ``unknown-run``, ``busy``; for a roots request
    also ``no-keys`` and ``not-a-reader``)."""

    id: int
    reason: str
    detail: str


ClientMessage = Request | Credit | Cancel | Roots
ServerMessage = End | Error


def _pack(*fields) -> bytes:
    return msgpack.packb([VERSION, *fields], use_bin_type=True)


def encode(message) -> bytes:
    """One message's header part."""
    if isinstance(message, Request):
        return _pack(REQUEST, message.id, message.stream, message.run, message.first, message.last, message.tags,
                     message.credit)
    if isinstance(message, Roots):
        return _pack(ROOTS, message.id, message.stream, message.run, message.bits, message.generation)
    if isinstance(message, Credit):
        return _pack(CREDIT, message.id, message.credit)
    if isinstance(message, Cancel):
        return _pack(CANCEL, message.id)
    if isinstance(message, End):
        return _pack(END, message.id, message.served_last, message.available_first, message.available_last)
    if isinstance(message, Error):
        return _pack(ERROR, message.id, message.reason, message.detail[:MAX_REASON])
    raise TypeError(f"not a replay message: {message!r}")


def frame_header(request_id: int) -> bytes:
    """The header part of a replayed frame (its topic and body follow)."""
    return _pack(FRAME, request_id)


def _unpack(data: bytes, limit: int) -> list:
    if len(data) > limit:
        raise ReplayMessageError(f"message of {len(data)} bytes exceeds {limit}")
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=True, max_bin_len=limit, max_str_len=limit,
                                 max_array_len=16, max_map_len=0, max_ext_len=0, strict_map_key=True)
    except Exception:
        raise ReplayMessageError("not a msgpack message") from None
    if not isinstance(fields, list) or len(fields) < 3 or fields[0] != VERSION or type(fields[0]) is not int:
        raise ReplayMessageError("not a version-1 replay message")
    if not isinstance(fields[1], str) or type(fields[2]) is not int or not 0 <= fields[2] <= MAX_ID:
        raise ReplayMessageError("kind or request id malformed")
    return fields


def _uint(value, limit: int, what: str, request_id: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise ReplayMessageError(f"{what} must be an integer in 0..{limit}", request_id)
    return value


def _check_run(stream, run, rid: int) -> None:
    if not (isinstance(stream, bytes) and 1 <= len(stream) <= MAX_TOPIC_BYTES and b"\0" not in stream):
        raise ReplayMessageError("stream must be 1..200 bytes without NUL", rid)
    if not (isinstance(run, bytes) and len(run) == STREAM_ID_BYTES):
        raise ReplayMessageError(f"run must be a {STREAM_ID_BYTES}-byte stream id", rid)


def decode_client(data: bytes) -> ClientMessage:
    """A message a client sent, validated."""
    fields = _unpack(data, MAX_REQUEST_BYTES)
    kind, rid = fields[1], fields[2]
    if kind == REQUEST and len(fields) == 9:
        _, _, _, stream, run, first, last, tags, credit = fields
        _check_run(stream, run, rid)
        first, last = _uint(first, MAX_SEQ, "first", rid), _uint(last, MAX_SEQ, "last", rid)
        if first < 1 or (last and last < first):
            raise ReplayMessageError("range must have 1 <= first <= last (or last = 0: to the end)", rid)
        if not (isinstance(tags, bytes) and len(tags) <= MAX_GROUP_BITS and not tags.strip(b"01")):
            raise ReplayMessageError("tags must be up to 16 ASCII bits", rid)
        return Request(rid, stream, run, first, last, tags, _uint(credit, MAX_CREDIT, "credit", rid))
    if kind == ROOTS and len(fields) == 7:
        _, _, _, stream, run, bits, generation = fields
        _check_run(stream, run, rid)
        if not (isinstance(bits, bytes) and len(bits) == TREE_BITS and not bits.strip(b"01")):
            raise ReplayMessageError(f"bits must be {TREE_BITS} ASCII bits", rid)
        return Roots(rid, stream, run, bits, _uint(generation, MAX_GENERATION, "generation", rid))
    if kind == CREDIT and len(fields) == 4:
        return Credit(rid, _uint(fields[3], MAX_CREDIT, "credit", rid))
    if kind == CANCEL and len(fields) == 3:
        return Cancel(rid)
    raise ReplayMessageError(f"unknown message kind {kind!r} or wrong arity", rid)


def decode_server(data: bytes) -> tuple[str, int, list]:
    """(kind, request id, the remaining fields) of a message a server sent: ``frame``, ``end`` or ``error``."""
    fields = _unpack(data, 4096)
    kind, rid, rest = fields[1], fields[2], fields[3:]
    if kind == FRAME and not rest:
        return kind, rid, rest
    if kind == END and len(rest) == 3 and all(type(v) is int and 0 <= v <= MAX_SEQ for v in rest):
        return kind, rid, rest
    if kind == ERROR and len(rest) == 2 and all(isinstance(v, str) for v in rest):
        return kind, rid, rest
    raise ReplayMessageError(f"unknown server message {kind!r} or wrong fields", rid)
