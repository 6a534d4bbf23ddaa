"""Every decoder refuses garbage with its own error, and the reader keeps running: frames, CMS, the
receiver, and the trust layer's parsers of slash-form DNs and certificate files."""

from __future__ import annotations

import base64

import msgpack
from cryptography.hazmat.primitives import serialization
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqsec.crypto import cms, enveloped, signed
from zmqsec.keys.dn import parse_slash_dn, slash_dn
from zmqsec.keys.errors import KeyFileError
from zmqsec.keys.pemfiles import parse_certificates
from zmqsec.machines.receiver import Rejected, StreamReceiver
from zmqsec.protocol import frames
from zmqsec.protocol.primitives import KeyRecordError, decode_key_record, encode_key_record

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def reader(stream_pki):
    """The session's stream PKI (tests/conftest.py), whose reader is portal and whose outsider is no recipient."""
    return stream_pki


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_frame_decoder_raises_only_frame_error(parts):
    try:
        frames.decode(parts)
    except frames.FrameError as exc:
        assert exc.reason in {"bad-parts", "bad-topic", "unknown-kind", "oversized", "bad-msgpack",
                              "unknown-version", "bad-field"}


body_fields = st.lists(st.one_of(st.integers(-5, 2**64 - 1), st.binary(max_size=40), st.text(max_size=5), st.none(),
                                 st.booleans(), st.floats(allow_nan=False)), max_size=7)


@FUZZ
@given(st.sampled_from([b"D", b"K", b"S", b"X", b"G01.", b"T0110.", b"R"]), body_fields)
def test_structured_garbage_bodies(kind, fields):
    try:
        frames.decode([b"apel\x00" + kind, msgpack.packb(fields)])
    except frames.FrameError:
        pass


def _around(*values):  # each bound, and one past it
    return st.sampled_from([v + d for v in values for d in (-1, 0, 1)])


# A data frame's topic and fields, each field either valid or one of the values a rule refuses: most frames
# drawn break one rule or none.
_DATA_CHOICES = (
    st.sampled_from([b"apel\x00D", b"\x00D", b"a\x00b\x00D", b"x" * 255 + b"\x00D", b"x" * 256 + b"\x00D"]),
    st.one_of(st.just(1), st.just(True), _around(1)),
    st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20), st.text(max_size=1)),
    st.one_of(_around(0, 2**32 - 1), st.booleans(), st.binary(max_size=2), st.none()),
    st.one_of(_around(0, 2**64 - 2), st.none(), st.floats(0, 1)),
    st.one_of(st.binary(max_size=40), st.integers(0, 9), st.text(max_size=1)),
    st.binary(max_size=2),  # trailing bytes
)
_VALID = [b"apel\x00D", 1, b"s" * 16, 7, 9, b"ciphertext", b""]


@st.composite
def _data_frames(draw):
    values = list(_VALID)
    for index in draw(st.lists(st.integers(0, len(values) - 1), max_size=2)):
        values[index] = draw(_DATA_CHOICES[index])
    topic, *fields, trailing = values
    return topic, msgpack.packb(fields) + trailing


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_data_frames(), st.tuples(st.just(b"apel\x00D"), body_fields.map(msgpack.packb))))
def test_the_data_frame_fast_path_decides_as_the_full_decoder(frame):
    """The per-message path (frames._data_frame) takes a data frame only if the full rules take it, and makes
    the same frame of it; it takes every data frame they take."""
    topic, body = frame
    fast = frames._data_frame(topic, body)
    try:
        full = frames.decode_strictly([topic, body])
    except frames.FrameError:
        full = None
    assert fast == full


@pytest.mark.parametrize("parts,reason", [
    ([b"apel\x00D"], "bad-parts"),
    ([b"apel", b"x"], "bad-topic"),
    ([b"apel\x00Z", b"x"], "unknown-kind"),
    ([b"apel\x00D", b"\xc1"], "bad-msgpack"),
    ([b"apel\x00D", msgpack.packb([2, b"x" * 16, 1, 1, b""])], "unknown-version"),
    ([b"apel\x00D", msgpack.packb([1, b"short", 1, 1, b""])], "bad-field"),
    ([b"apel\x00D", msgpack.packb([1, b"x" * 16, -1, 1, b""])], "bad-field"),
    ([b"apel\x00D", msgpack.packb([1, b"x" * 16, 1, 1, b""]) + b"trailing"], "bad-msgpack"),
    ([b"apel\x00S", msgpack.packb([1, b"x" * 16, 1, b"x" * 31, b"sig"])], "bad-field"),
    ([b"apel\x00D", b"\x00" * (frames.MAX_DATA_FRAME + 1)], "oversized"),
])
def test_specific_reasons(parts, reason):
    with pytest.raises(frames.FrameError) as exc:
        frames.decode(parts)
    assert exc.value.reason == reason


@FUZZ
@given(st.binary(max_size=600))
def test_cms_decoders_raise_only_cms_errors(reader, data):
    for call in (lambda: enveloped.open_envelope(data, reader["portal"]), lambda: signed.verify_signature(data, b"content"),
                 lambda: enveloped.recipients(data),
                 lambda: enveloped.open_envelope(data, keks={b"0.1": bytes(32)})):
        try:
            call()
        except cms.CmsError:
            pass


@FUZZ
@given(st.integers(0, 2000), st.integers(0, 255))
def test_bit_flips_in_an_envelope_never_yield_a_confirmed_wrong_key(reader, position, value):
    record = encode_key_record(b"apel", b"s" * 16, 7, b"k" * 32)
    der = bytearray(enveloped.envelope(record, enveloped.certificate_recipients([reader["portal"].certificate])))
    position %= len(der)
    if der[position] == value:
        return
    der[position] = value
    try:
        plain = enveloped.open_envelope(bytes(der), reader["portal"])
    except cms.CmsError:
        return
    try:
        assert decode_key_record(plain) == (b"apel", b"s" * 16, 7, b"k" * 32)
    except KeyRecordError:
        pass  # key confirmation caught the corruption


def test_wrong_recipient_is_not_a_recipient(reader):
    der = enveloped.envelope(b"x", enveloped.certificate_recipients([reader.certs["outsider"].certificate]))
    with pytest.raises(cms.NotARecipient):
        enveloped.open_envelope(der, reader["portal"])


@FUZZ
@given(st.lists(st.lists(st.binary(max_size=120), min_size=2, max_size=2), max_size=20))
def test_the_receiver_survives_any_frame_sequence(reader, messages):
    receiver = StreamReceiver(reader["portal"], reader.trust)
    for parts in messages:
        for event in receiver.frame_received(parts, 0.0):
            assert isinstance(event, Rejected)
    receiver.tick(100.0)


@FUZZ
@given(st.data())
def test_large_envelopes_altered_anywhere_raise_only_cms_errors(reader, data):
    """Envelopes of more than 64 recipients are read by a DER walk of our own: every alteration of one
    must end in success or a CmsError, never another exception."""
    der = bytearray(_LARGE.setdefault("der", enveloped.envelope(b"record", enveloped.certificate_recipients([reader["portal"].certificate] * 70))))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(der) // 2, len(der)))
    for call in (lambda: enveloped.open_envelope(bytes(der[:cut]), reader["portal"]), lambda: enveloped.recipients(bytes(der[:cut])),
                 lambda: enveloped.open_envelope(bytes(der[:cut]), keks={b"0.1": bytes(32)})):
        try:
            call()
        except cms.CmsError:
            pass


_LARGE: dict = {}


# -- the trust layer's parsers ---------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "CN=x", "/", "/CN", "/XX=1", "/CN="])
def test_malformed_dns_are_value_errors(bad):
    with pytest.raises(ValueError):
        parse_slash_dn(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_dn_parser_only_raises_value_error(text):
    try:
        name = parse_slash_dn(text)
    except ValueError:
        return
    assert slash_dn(name).count("=") >= 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_certificate_parser_never_raises_anything_but_keyfileerror(data):
    try:
        parse_certificates(data, "fuzz")
    except KeyFileError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_pem_wrapped_garbage_is_keyfileerror(body):
    data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(KeyFileError):
        parse_certificates(data, "fuzz")


def test_a_certificate_with_an_unknown_version_is_malformed_not_a_crash(reader):
    """Found by hypothesis: X.509 version 6 made cryptography raise InvalidVersion (not a ValueError)."""
    cert_der = reader["portal"].certificate.public_bytes(serialization.Encoding.DER)
    assert b"\xa0\x03\x02\x01\x02" in cert_der  # [0] EXPLICIT INTEGER 2 (v3)
    bad_cert = cert_der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x06", 1)
    with pytest.raises(KeyFileError):
        parse_certificates(bad_cert)
    signature = signed.sign(b"record", reader["portal"])
    with pytest.raises(cms.MalformedCms):
        signed.verify_signature(signature.replace(cert_der, bad_cert, 1), b"record")
