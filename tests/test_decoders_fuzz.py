"""Every decoder refuses garbage with its own error, and the reader keeps running."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.ca import CertificateAuthority, Role
from keys.pemfiles import Credential
from keys.trust import TrustStore
from zmqsec import cms, frames
from zmqsec.primitives import KeyRecordError, decode_key_record, encode_key_record
from zmqsec.receiver import Rejected, StreamReceiver

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    ca = CertificateAuthority.init(d / "ca", rsa_bits=2048)
    r = ca.issue(role=Role.READER, cn="reader", out_dir=d)
    other = ca.issue(role=Role.READER, cn="other", out_dir=d)
    return {"cred": Credential.load(r.cert_path, r.key_path), "other": other.certificate,
            "trust": TrustStore.from_directory(ca.trust_dir)}


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
@given(st.sampled_from([b"D", b"K", b"S", b"X"]), body_fields)
def test_structured_garbage_bodies(kind, fields):
    try:
        frames.decode([b"apel\x00" + kind, msgpack.packb(fields)])
    except frames.FrameError:
        pass


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
    for call in (lambda: cms.open_envelope(data, reader["cred"]), lambda: cms.verify_signature(data, b"content"),
                 lambda: cms.recipients(data),
                 lambda: cms.open_envelope(data, keks={b"0.1": bytes(32)})):
        try:
            call()
        except cms.CmsError:
            pass


@FUZZ
@given(st.integers(0, 2000), st.integers(0, 255))
def test_bit_flips_in_an_envelope_never_yield_a_confirmed_wrong_key(reader, position, value):
    record = encode_key_record(b"apel", b"s" * 16, 7, b"k" * 32)
    der = bytearray(cms.envelope(record, [reader["cred"].certificate]))
    position %= len(der)
    if der[position] == value:
        return
    der[position] = value
    try:
        plain = cms.open_envelope(bytes(der), reader["cred"])
    except cms.CmsError:
        return
    try:
        assert decode_key_record(plain) == (b"apel", b"s" * 16, 7, b"k" * 32)
    except KeyRecordError:
        pass  # key confirmation caught the corruption


def test_wrong_recipient_is_not_a_recipient(reader):
    der = cms.envelope(b"x", [reader["other"]])
    with pytest.raises(cms.NotARecipient):
        cms.open_envelope(der, reader["cred"])


@FUZZ
@given(st.lists(st.lists(st.binary(max_size=120), min_size=2, max_size=2), max_size=20))
def test_the_receiver_survives_any_frame_sequence(reader, messages):
    receiver = StreamReceiver(reader["cred"], reader["trust"])
    for parts in messages:
        for event in receiver.frame_received(parts, 0.0):
            assert isinstance(event, Rejected)
    receiver.tick(100.0)


@FUZZ
@given(st.data())
def test_large_envelopes_altered_anywhere_raise_only_cms_errors(reader, data):
    """Envelopes of more than 64 recipients are read by a DER walk of our own: every alteration of one
    must end in success or a CmsError, never another exception."""
    der = bytearray(_LARGE.setdefault("der", cms.envelope(b"record", [reader["cred"].certificate] * 70)))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(der) // 2, len(der)))
    for call in (lambda: cms.open_envelope(bytes(der[:cut]), reader["cred"]), lambda: cms.recipients(bytes(der[:cut])),
                 lambda: cms.open_envelope(bytes(der[:cut]), keks={b"0.1": bytes(32)})):
        try:
            call()
        except cms.CmsError:
            pass


_LARGE: dict = {}
