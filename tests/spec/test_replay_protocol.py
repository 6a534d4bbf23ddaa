"""The replay protocol's codec (docs/PROTOCOL.md §10.4) and run frames (§10.2): every message encodes and
decodes, malformed client messages are refused with :class:`ReplayMessageError`, arbitrary bytes raise
nothing else, and the codec reaches every verdict of tests/vectors/replay.json."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import paths
from zmqsec.protocol import frames
from zmqsec.protocol import replay as codec
from zmqsec.protocol.checkpoint import run_valid, sign_run
from zmqsec.protocol.primitives import run_signing_input
from zmqsec.protocol.replay import Cancel, Credit, End, Error, ReplayMessageError, Request, Roots

FUZZ = settings(max_examples=500, deadline=None)
RUN = bytes(range(16))
VECTORS = json.loads((paths.VECTORS / "replay.json").read_text())["vectors"]
MESSAGE_TYPES = {"request": Request, "credit": Credit, "cancel": Cancel, "end": End, "error": Error, "roots": Roots}


def _pack(*fields) -> bytes:
    """A client message as any client could write it: a msgpack array of ``fields``."""
    return msgpack.packb(list(fields), use_bin_type=True)


def _request(**changes) -> Request:
    """A valid request, with ``changes``."""
    return dataclasses.replace(Request(7, b"apel.jobs", RUN, 1, 0, b"", 512), **changes)


# -- every message encodes and decodes -----------------------------------------------------------

@pytest.mark.parametrize("message", [
    _request(),
    _request(id=0, stream=b"s", first=5, last=5, tags=b"0", credit=0),
    _request(id=codec.MAX_ID, stream=b"x" * 200, first=2**64 - 1, last=2**64 - 1, tags=b"01" * 8,
             credit=codec.MAX_CREDIT),
    Credit(7, 256), Credit(0, 0), Credit(codec.MAX_ID, codec.MAX_CREDIT),
    Cancel(7), Cancel(codec.MAX_ID),
], ids=repr)
def test_client_messages_round_trip(message):
    data = codec.encode(message)
    assert codec.decode_client(data) == message
    assert len(data) <= codec.MAX_REQUEST_BYTES


def test_a_request_is_the_array_of_the_spec_table():
    """``[1, "request", id, stream, run, first, last, tags, credit]``: names as text, bytes as binary."""
    data = codec.encode(_request(id=9, first=3, last=30, tags=b"0110", credit=512))
    assert msgpack.unpackb(data, raw=False) == [1, "request", 9, b"apel.jobs", RUN, 3, 30, b"0110", 512]
    assert msgpack.unpackb(codec.encode(Credit(9, 5)), raw=False) == [1, "credit", 9, 5]
    assert msgpack.unpackb(codec.encode(Cancel(9)), raw=False) == [1, "cancel", 9]


@pytest.mark.parametrize("message,decoded", [
    (End(7, 90, 1, 200), ("end", 7, [90, 1, 200])),
    (End(0, 0, 0, 0), ("end", 0, [0, 0, 0])),
    (End(codec.MAX_ID, 2**64 - 1, 1, 2**64 - 1), ("end", codec.MAX_ID, [2**64 - 1, 1, 2**64 - 1])),
    (Error(7, codec.UNKNOWN_RUN, "run 00 is not in this journal"), ("error", 7, ["unknown-run", "run 00 is not in this journal"])),
    (Error(3, codec.BAD_REQUEST, ""), ("error", 3, ["bad-request", ""])),
    (Error(3, codec.BUSY, "later"), ("error", 3, ["busy", "later"])),
], ids=repr)
def test_server_messages_round_trip(message, decoded):
    assert codec.decode_server(codec.encode(message)) == decoded


def test_frame_header_round_trips_and_is_followed_by_the_frame():
    assert codec.decode_server(codec.frame_header(42)) == ("frame", 42, [])
    assert msgpack.unpackb(codec.frame_header(42), raw=False) == [1, "frame", 42]


def test_an_error_detail_is_cut_to_its_limit():
    decoded = codec.decode_server(codec.encode(Error(1, codec.BAD_REQUEST, "x" * 5000)))
    assert decoded[2] == ["bad-request", "x" * codec.MAX_REASON]


def test_only_replay_messages_encode():
    with pytest.raises(TypeError):
        codec.encode(("request", 1))


# -- strict refusals ------------------------------------------------------------------------------

REFUSED = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "trailing bytes": codec.encode(Cancel(7)) + b"\x00",
    "a map": msgpack.packb({"kind": "request"}),
    "a bare integer": msgpack.packb(1),
    "two fields": _pack(1, "cancel"),
    "version 2": _pack(2, "cancel", 7),
    "version as text": _pack("1", "cancel", 7),
    "version as bool": _pack(True, "cancel", 7),
    "kind as bytes": _pack(1, b"cancel", 7),
    "unknown kind": _pack(1, "fetch", 7),
    "server kind end": codec.encode(End(7, 1, 1, 1)),
    "server kind frame": codec.frame_header(7),
    "request arity 8": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b""),
    "request arity 10": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"", 512, 0),
    "credit arity 3": _pack(1, "credit", 7),
    "credit arity 5": _pack(1, "credit", 7, 1, 1),
    "cancel arity 4": _pack(1, "cancel", 7, 1),
    "id as text": _pack(1, "cancel", "7"),
    "id negative": _pack(1, "cancel", -1),
    "id over 32 bits": _pack(1, "cancel", 2**32),
    "id as float": _pack(1, "cancel", 7.0),
    "stream as text": _pack(1, "request", 7, "apel.jobs", RUN, 1, 0, b"", 512),
    "stream empty": _pack(1, "request", 7, b"", RUN, 1, 0, b"", 512),
    "stream with NUL": _pack(1, "request", 7, b"apel\0jobs", RUN, 1, 0, b"", 512),
    "stream 201 bytes": _pack(1, "request", 7, b"s" * 201, RUN, 1, 0, b"", 512),
    "run 15 bytes": _pack(1, "request", 7, b"apel.jobs", RUN[:15], 1, 0, b"", 512),
    "run 17 bytes": _pack(1, "request", 7, b"apel.jobs", RUN + b"!", 1, 0, b"", 512),
    "run empty": _pack(1, "request", 7, b"apel.jobs", b"", 1, 0, b"", 512),
    "run as text": _pack(1, "request", 7, b"apel.jobs", "0123456789abcdef", 1, 0, b"", 512),
    "run as nil": _pack(1, "request", 7, b"apel.jobs", None, 1, 0, b"", 512),
    "first 0": _pack(1, "request", 7, b"apel.jobs", RUN, 0, 0, b"", 512),
    "first 0 with last": _pack(1, "request", 7, b"apel.jobs", RUN, 0, 5, b"", 512),
    "last below first": _pack(1, "request", 7, b"apel.jobs", RUN, 10, 9, b"", 512),
    "first negative": _pack(1, "request", 7, b"apel.jobs", RUN, -1, 0, b"", 512),
    "first as bool": _pack(1, "request", 7, b"apel.jobs", RUN, True, 0, b"", 512),
    "first as float": _pack(1, "request", 7, b"apel.jobs", RUN, 1.0, 0, b"", 512),
    "last as text": _pack(1, "request", 7, b"apel.jobs", RUN, 1, "0", b"", 512),
    "tags not bits": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"0120", 512),
    "tags 17 bits": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"0" * 17, 512),
    "tags as text": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, "01", 512),
    "tags as nil": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, None, 512),
    "credit negative": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"", -1),
    "credit over the limit": _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"", codec.MAX_CREDIT + 1),
    "credit message over the limit": _pack(1, "credit", 7, codec.MAX_CREDIT + 1),
    "credit as text": _pack(1, "credit", 7, "5"),
    "nested array": _pack(1, "request", 7, [b"apel.jobs"], RUN, 1, 0, b"", 512),
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_malformed_client_messages_are_refused(data):
    with pytest.raises(ReplayMessageError):
        codec.decode_client(data)


def test_a_message_over_1_kib_is_refused_for_its_size():
    data = _pack(1, "request", 7, b"apel.jobs", RUN, 1, 0, b"", 512, b"x" * 1000)
    assert len(data) > codec.MAX_REQUEST_BYTES
    with pytest.raises(ReplayMessageError, match="exceeds"):
        codec.decode_client(data)
    # One byte under the limit is parsed (and then refused for what it says, not for its size).
    padded = _pack(1, "cancel", 7, b"x" * (codec.MAX_REQUEST_BYTES - 16))
    assert len(padded) <= codec.MAX_REQUEST_BYTES
    with pytest.raises(ReplayMessageError) as exc:
        codec.decode_client(padded)
    assert "exceeds" not in str(exc.value)


@pytest.mark.parametrize("data", [
    _pack(1, "request", 77, b"apel.jobs", RUN[:15], 1, 0, b"", 512),
    _pack(1, "request", 77, b"apel.jobs", RUN, 0, 0, b"", 512),
    _pack(1, "request", 77, b"apel.jobs", RUN, 1, 0, b"2", 512),
    _pack(1, "credit", 77, -5),
    _pack(1, "cancel", 77, 1),
])
def test_a_refusal_names_the_request_it_could_read(data):
    """The server answers ``error`` with the client's request id when the message got that far."""
    with pytest.raises(ReplayMessageError) as exc:
        codec.decode_client(data)
    assert exc.value.request_id == 77


@pytest.mark.parametrize("data", [
    b"", b"\xc1", _pack(2, "end", 1, 1, 1, 1), _pack(1, "end", 1, 1, 1), _pack(1, "end", 1, -1, 1, 1),
    _pack(1, "error", 1, "busy"), _pack(1, "error", 1, b"busy", b""), _pack(1, "frame", 1, b"topic"),
    _pack(1, "request", 1), codec.encode(Cancel(1)), _pack(1, "end", 1, 1, 1, 1) + b"x",
])
def test_malformed_server_messages_are_refused(data):
    with pytest.raises(ReplayMessageError):
        codec.decode_server(data)


# -- arbitrary input ---------------------------------------------------------------------------

_field = st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=40), st.text(max_size=12), st.none(),
                   st.booleans(), st.floats(allow_nan=False),
                   st.sampled_from([RUN, b"apel.jobs", b"0101", b"01" * 128, 1, 0]))
_kind = st.sampled_from(["request", "credit", "cancel", "roots", "frame", "end", "error", "x"])


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_client_on_arbitrary_bytes_raises_only_replay_message_error(data):
    try:
        message = codec.decode_client(data)
    except ReplayMessageError:
        return
    assert isinstance(message, (Request, Credit, Cancel, Roots))


@FUZZ
@given(st.one_of(st.just(1), _field), _kind, _field, st.lists(_field, max_size=8))
def test_structured_garbage_is_refused_or_is_a_valid_message(version, kind, rid, rest):
    """msgpack arrays shaped like messages: refused, or accepted only as what they encode exactly."""
    data = msgpack.packb([version, kind, rid, *rest], use_bin_type=True)
    try:
        message = codec.decode_client(data)
    except ReplayMessageError:
        return
    assert codec.encode(message) == data  # nothing accepted that the codec would not write itself
    if isinstance(message, Request):
        assert len(message.run) == 16 and message.first >= 1 and (message.last == 0 or message.last >= message.first)
    if isinstance(message, Roots):
        assert len(message.run) == 16 and len(message.bits) == 256 and not message.bits.strip(b"01")


@FUZZ
@given(st.binary(max_size=5000))
def test_decode_server_on_arbitrary_bytes_raises_only_replay_message_error(data):
    try:
        kind, _, _ = codec.decode_server(data)
    except ReplayMessageError:
        return
    assert kind in ("frame", "end", "error")


# -- vectors ---------------------------------------------------------------------------------

def _message(described: dict):
    """The message a vector describes (bytes fields in hex)."""
    cls = MESSAGE_TYPES[described["type"]]
    values = {f.name: bytes.fromhex(described[f.name]) if f.type == "bytes" else described[f.name]
              for f in dataclasses.fields(cls)}
    return cls(**values)


def _run_verdict(v) -> str:
    """What a reader makes of a vector's run frame: success, bad-run, or the frame codec's reason."""
    try:
        frame = frames.decode([bytes.fromhex(p) for p in v["parts"]])
    except frames.FrameError as exc:
        return exc.reason
    assert isinstance(frame, frames.RunFrame)
    return "success" if run_valid(frame, x509.load_pem_x509_certificate(v["publisher_cert"].encode())) else "bad-run"


def _client_verdict(v) -> str:
    """What a server makes of a vector's client message: success (and the message is the one described)."""
    try:
        message = codec.decode_client(bytes.fromhex(v["bytes"]))
    except ReplayMessageError:
        return "bad-request"
    assert message == _message(v["message"])
    return "success"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector):
    kind, data = vector["kind"], bytes.fromhex(vector.get("bytes", ""))
    if kind == "run-frame":
        assert _run_verdict(vector) == vector["expect"]
        if vector["expect"] == "success":
            frame = frames.decode([bytes.fromhex(p) for p in vector["parts"]])
            assert (frame.topic, frame.stream_id, frame.previous_stream_id, frame.previous_last_seq) == (
                bytes.fromhex(vector["stream"]) + b"\0R", bytes.fromhex(vector["stream_id"]),
                bytes.fromhex(vector["previous_stream_id"]), vector["previous_last_seq"])
            assert run_signing_input(frame.topic, frame.stream_id, frame.previous_stream_id,
                                     frame.previous_last_seq).hex() == vector["signing_input"]
            # RSA PKCS#1 v1.5 is deterministic: the published test key signs the very same frame.
            key = serialization.load_pem_private_key(vector["publisher_key"].encode(), None)
            again = sign_run(bytes.fromhex(vector["stream"]), frame.stream_id, frame.previous_stream_id,
                             frame.previous_last_seq, key)
            assert [p.hex() for p in frames.encode(again)] == vector["parts"]
    elif kind == "replay-client":
        assert _client_verdict(vector) == vector["expect"]
        if vector["expect"] == "success":
            assert codec.encode(_message(vector["message"])) == data
    elif kind == "replay-server":
        message = _message(vector["message"])
        assert codec.encode(message) == data
        fields = [getattr(message, f.name) for f in dataclasses.fields(message)][1:]
        assert codec.decode_server(data) == (vector["message"]["type"], message.id, fields)
    elif kind == "replay-frame-header":
        assert codec.frame_header(vector["message"]["id"]) == data
        assert codec.decode_server(data) == ("frame", vector["message"]["id"], [])
    else:
        pytest.fail(f"unknown vector kind {kind}")


def test_every_verdict_and_message_is_exercised():
    assert {v["expect"] for v in VECTORS} == {"success", "bad-run", "bad-request", "bad-field"}
    described = {v["message"]["type"] for v in VECTORS if "message" in v}
    assert described == {"request", "credit", "cancel", "end", "error", "frame", "roots"}


def test_the_vector_file_holds_what_its_generator_builds():
    """A codec change that alters the bytes shows up as a stale replay.json, not as a silent drift."""
    spec = importlib.util.spec_from_file_location("generate_replay", paths.VECTORS / "generate_replay.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    stored = [v for v in VECTORS if v["kind"] != "run-frame"]
    assert stored == generator.message_vectors()
