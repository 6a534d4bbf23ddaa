"""EMI S/MIME bodies: what we emit, openssl and APEL SSM's receiver accept; what they emit, we accept."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit import ssmpeer
from kit.opensslpeer import run
from kit.pki import Pki
from zmqsec.bridges import smime
from zmqsec.crypto import cms
from zmqsec.keys.ca import Role
from zmqsec.keys.dn import slash_dn
from zmqsec.keys.pemfiles import Credential, public_key_der

RECORD = (b"APEL-individual-job-message: v0.3\nSite: RAL-LCG2\nSubmitHost: ce01.example.org\n"
          b"LocalJobId: 31564872\nWallDuration: 3600\nCpuDuration: 3500\n%%\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A grid-style CA with the bridge (signer), the APEL server (recipient) and another server (not a recipient)."""
    pki = Pki.create(tmp_path_factory.mktemp("smime"), "/C=UK/O=eScience/CN=Test CA", bridge=Role.BRIDGE)
    pki.issue("server", Role.SERVER, cn="apel.example.org")
    pki.issue("other", Role.SERVER)
    return pki


def _write(pki, name, data: bytes):
    path = pki.dir / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("digest", list(smime.MICALG))
def test_signed_body_verifies_with_openssl_smime_and_cms(pki, digest):
    body = smime.sign(RECORD, pki["bridge"], digest=digest)
    assert body.isascii() and f'micalg="{smime.MICALG[digest]}"'.encode() in body
    path = _write(pki, f"signed-{digest}.txt", body)
    trust = str(pki.ca.trust_dir)
    out = run("smime", "-verify", "-CApath", trust, "-in", str(path)).stdout
    assert out.replace(b"\r\n", b"\n") == b"Content-Type: text/plain\n\n" + RECORD
    run("cms", "-verify", "-CApath", trust, "-in", str(path), "-out", "/dev/null")
    # Only the signer's certificate is embedded.
    certs = run("pkcs7", "-print_certs", input=run("smime", "-pk7out", "-in", str(path)).stdout).stdout
    assert certs.count(b"BEGIN CERTIFICATE") == 1


@pytest.mark.parametrize("cipher", list(smime.CIPHERS))
def test_encrypted_body_decrypts_with_openssl_smime(pki, cipher):
    body = smime.encrypt(smime.sign(RECORD, pki["bridge"]), [pki.certs["server"].certificate], cipher=cipher)
    assert b"smime-type=enveloped-data" in body and b'name="smime.p7m"' in body and body.isascii()
    path = _write(pki, f"enc-{cipher}.txt", body)
    inner = run("smime", "-decrypt", "-recip", str(pki.certs["server"].cert_path), "-inkey", str(pki.certs["server"].key_path),
                "-in", str(path)).stdout
    verified = run("smime", "-verify", "-CApath", str(pki.ca.trust_dir), input=inner).stdout
    assert verified.replace(b"\r\n", b"\n").endswith(RECORD)
    text = run("cms", "-cmsout", "-print", "-in", str(path), "-inform", "SMIME").stdout.decode()
    assert f"aes-{cipher[3:]}-cbc" in text
    refused = run("smime", "-decrypt", "-recip", str(pki.certs["other"].cert_path), "-inkey", str(pki.certs["other"].key_path),
                  "-in", str(path), check=False)
    assert refused.returncode != 0


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("content", [RECORD, b"caf\xc3\xa9 = 3\ttabs \r\nand CRs\r\n", b"x" * 3000 + b"\n",
                                     b"Type: application/pkcs7-mime\nOther: application/x-pkcs7-mime\n"])
def test_apel_ssm_receiver_accepts_our_bodies(pki, encrypt, content):
    body = smime.sign(content, pki["bridge"])
    if encrypt:
        body = smime.encrypt(body, [pki.certs["server"].certificate])
    dn = slash_dn(pki.certs["bridge"].certificate.subject)
    message, signer = ssmpeer.receive(body.decode("ascii"), pki.certs["server"].cert_path, pki.certs["server"].key_path,
                                      pki.ca.trust_dir, [dn])
    assert signer == dn == "/C=UK/O=eScience/CN=bridge.example.org"
    # SSM strips the text it gets from openssl, so a trailing newline of a 7bit body is lost there;
    # quoted-printable carries every byte, CRs included.
    assert message.encode() in (content, content.rstrip(b"\n"))


@pytest.mark.parametrize("content", [b"application/pkcs7-mime", RECORD + b"application/x-pkcs7-mime\n" * 40])
def test_a_sign_only_body_never_carries_the_text_ssm_takes_for_encryption(pki, content):
    body = smime.sign(content, pki["bridge"])
    assert b"application/pkcs7-mime" not in body and b"application/x-pkcs7-mime" not in body
    assert smime.open_message(body).content == content


def test_ssm_refuses_a_signer_outside_its_dn_list(pki):
    body = smime.sign(RECORD, pki["bridge"]).decode()
    with pytest.raises(ValueError, match="Signer not in valid DNs list"):
        ssmpeer.receive(body, pki.certs["server"].cert_path, pki.certs["server"].key_path, pki.ca.trust_dir, ["/CN=someone else"])


def test_we_accept_what_openssl_and_ssm_senders_produce(pki):
    b = pki.certs["bridge"]
    record = _write(pki, "record.txt", RECORD)
    signed_text = run("smime", "-sign", "-text", "-signer", str(b.cert_path), "-inkey", str(b.key_path),
                      "-in", str(record)).stdout  # what SSM's crypto.sign runs
    enc = run("smime", "-encrypt", "-aes256", str(pki.certs["server"].cert_path), input=signed_text).stdout
    cms_signed = run("cms", "-sign", "-signer", str(b.cert_path), "-inkey", str(b.key_path), "-in", str(record),
                     "-md", "sha512").stdout
    cms_opaque = run("cms", "-sign", "-nodetach", "-signer", str(b.cert_path), "-inkey", str(b.key_path),
                     "-in", str(record)).stdout
    cms_enc = run("cms", "-encrypt", "-aes-128-cbc", "-recip", str(pki.certs["server"].cert_path),
                  "-keyopt", "rsa_padding_mode:oaep", input=cms_signed).stdout
    for name, raw, encrypted in (("smime -sign -text", signed_text, False), ("then -encrypt -aes256", enc, True),
                                 ("cms -sign", cms_signed, False), ("cms -sign -nodetach", cms_opaque, False),
                                 ("cms -encrypt oaep", cms_enc, True)):
        opened = smime.open_message(raw, pki["server"])
        assert opened.content == RECORD, name
        assert opened.encrypted == encrypted and opened.signer == b.certificate, name


def test_tampering_and_forgery_are_refused(pki):
    body = smime.sign(RECORD, pki["bridge"])
    tampered = body.replace(b"WallDuration: 3600", b"WallDuration: 9600")
    with pytest.raises(cms.SignatureInvalid):
        smime.open_message(tampered)
    # A forger embeds the authorized certificate but signs with its own key (the attack SSM falls for).
    forger = pki.ca.issue(role=Role.BRIDGE, cn="forger", out_dir=pki.dir)
    forged_cred = Credential(pki.certs["bridge"].certificate, forger.key)
    with pytest.raises(cms.SignatureInvalid):
        smime.open_message(smime.sign(RECORD, forged_cred))
    with pytest.raises(smime.NotSigned):
        smime.open_message(b"Content-Type: text/plain\r\n\r\n" + RECORD)
    with pytest.raises(cms.NotARecipient):
        smime.open_message(smime.encrypt(body, [pki.certs["other"].certificate]), pki["server"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=800))
def test_smime_parser_raises_only_its_errors(pki, data):
    try:
        smime.open_message(data, pki["server"])
    except cms.CmsError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_mutated_real_messages_are_refused_cleanly(pki, position, junk):
    body = bytearray(smime.sign(RECORD, pki["bridge"]))
    position %= len(body)
    body[position:position + len(junk)] = junk
    try:
        opened = smime.open_message(bytes(body), pki["server"])
    except cms.CmsError:
        return
    # Whatever survives was signed by the bridge's key over the original record.  (A mutation inside
    # the embedded certificate can leave its key intact; the trust layer then refuses its CA signature.)
    assert opened.content == RECORD
    assert public_key_der(opened.signer) == public_key_der(pki.certs["bridge"].certificate)
