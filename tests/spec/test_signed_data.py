"""CMS SignedData as zmqsec writes it (zmqsec/crypto/signed.py): spliced DER, byte for byte what asn1crypto
builds from the same fields, for RSA and EC signers, detached and attached content, chains and extra
certificates, and signing times on both sides of 2050 (UTCTime, then GeneralizedTime).  openssl's view of
the same structures is tests/interop/test_smime_interop.py's."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from asn1crypto import cms as asn1_cms

from kit.pki import Pki
from zmqsec.crypto import signing
from zmqsec.crypto.cms import asn1_cert, issuer_and_serial
from zmqsec.crypto.signed import sign, verify_signature
from zmqsec.keys.ca import KeyType, Role


def _reference(content, credential, *, digest, detached, extra_certs, when) -> bytes:
    """The SignedData built field by field with asn1crypto (the encoder zmqsec used before splicing)."""
    attrs = [
        asn1_cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        asn1_cms.CMSAttribute({"type": "signing_time", "values": [asn1_cms.Time(
            {"utc_time" if when.year < 2050 else "generalized_time": when})]}),
        asn1_cms.CMSAttribute({"type": "message_digest", "values": [hashlib.new(digest, content).digest()]}),
    ]
    signed_attrs = asn1_cms.CMSAttributes(sorted(attrs, key=lambda a: a.dump()))
    signer = asn1_cms.SignerInfo({
        "version": "v1",
        "sid": asn1_cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(credential.certificate)}),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": signing.cms_algorithm(credential.key, digest)},
        "signature": b"",
    })
    signed = asn1_cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": None if detached else content},
        "certificates": [asn1_cert(c) for c in (credential.certificate, *credential.chain, *extra_certs)],
        "signer_infos": [signer],
    })
    return asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}), signed_attrs


@pytest.fixture(scope="module")
def signers(tmp_path_factory):
    rsa = Pki.create(tmp_path_factory.mktemp("rsa"), "/O=zmqsec test/CN=RSA CA", bridge=Role.BRIDGE, other=Role.READER)
    ec = Pki.create(tmp_path_factory.mktemp("ec"), "/O=zmqsec test/CN=EC CA", key_type=KeyType.EC, bridge=Role.BRIDGE)
    return {"rsa": (rsa["bridge"], rsa.certs["other"].certificate), "ec": (ec["bridge"], None)}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
@pytest.mark.parametrize("digest", ["sha256", "sha512"])
@pytest.mark.parametrize("detached", [True, False])
@pytest.mark.parametrize("year", [2026, 2051])
def test_spliced_der_is_what_asn1crypto_builds(signers, kind, digest, detached, year):
    credential, extra = signers[kind]
    when = dt.datetime(year, 12, 1, 8, 30, 5, tzinfo=dt.timezone.utc)
    content = b"APEL-summary-job-message: v0.3\n" * 40
    extra_certs = (extra,) if extra is not None else ()
    der = sign(content, credential, digest=digest, detached=detached, extra_certs=extra_certs, clock=lambda: when)
    reference, signed_attrs = _reference(content, credential, digest=digest, detached=detached,
                                         extra_certs=extra_certs, when=when)
    # Signatures differ (EC signatures are randomized): compare with ours put into the reference.
    ours = asn1_cms.ContentInfo.load(der)
    reference["content"]["signer_infos"][0]["signature"] = ours["content"]["signer_infos"][0]["signature"].native
    assert der == reference.dump(force=True)
    assert ours["content"]["signer_infos"][0]["signed_attrs"].dump(force=True)[1:] == signed_attrs.dump()[1:]
    verified = verify_signature(der, content if detached else None)
    assert verified.content == content and verified.signing_time == when and verified.digest == digest
