"""EMI S/MIME bodies: what we emit, openssl and APEL SSM's receiver accept; what they emit, we accept."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.ca import CertificateAuthority, Role
from keys.dn import parse_slash_dn, slash_dn
from keys.pemfiles import Credential, public_key_der
from zmqsec import cms, smime
import ssmpeer
from opensslpeer import run

RECORD = (b"APEL-individual-job-message: v0.3\nSite: RAL-LCG2\nSubmitHost: ce01.example.org\n"
          b"LocalJobId: 31564872\nWallDuration: 3600\nCpuDuration: 3500\n%%\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("smime")
    ca = CertificateAuthority.init(d / "ca", subject=parse_slash_dn("/C=UK/O=eScience/CN=Test CA"), rsa_bits=2048)
    bridge = ca.issue(role=Role.BRIDGE, cn="bridge.example.org", out_dir=d)
    server = ca.issue(role=Role.SERVER, cn="apel.example.org", out_dir=d)
    other = ca.issue(role=Role.SERVER, cn="other.example.org", out_dir=d)
    return {"dir": d, "ca": ca, "bridge": bridge, "server": server, "other": other,
            "cred": Credential.load(bridge.cert_path, bridge.key_path),
            "server_cred": Credential.load(server.cert_path, server.key_path)}


def _write(pki, name, data: bytes):
    path = pki["dir"] / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("digest", list(smime.MICALG))
def test_signed_body_verifies_with_openssl_smime_and_cms(pki, digest):
    body = smime.sign(RECORD, pki["cred"], digest=digest)
    assert body.isascii() and f'micalg="{smime.MICALG[digest]}"'.encode() in body
    path = _write(pki, f"signed-{digest}.txt", body)
    trust = str(pki["ca"].trust_dir)
    out = run("smime", "-verify", "-CApath", trust, "-in", str(path)).stdout
    assert out.replace(b"\r\n", b"\n") == b"Content-Type: text/plain\n\n" + RECORD
    run("cms", "-verify", "-CApath", trust, "-in", str(path), "-out", "/dev/null")
    # Only the signer's certificate is embedded.
    certs = run("pkcs7", "-print_certs", input=run("smime", "-pk7out", "-in", str(path)).stdout).stdout
    assert certs.count(b"BEGIN CERTIFICATE") == 1


@pytest.mark.parametrize("cipher", list(smime.CIPHERS))
def test_encrypted_body_decrypts_with_openssl_smime(pki, cipher):
    body = smime.encrypt(smime.sign(RECORD, pki["cred"]), [pki["server"].certificate], cipher=cipher)
    assert b"smime-type=enveloped-data" in body and b'name="smime.p7m"' in body and body.isascii()
    path = _write(pki, f"enc-{cipher}.txt", body)
    inner = run("smime", "-decrypt", "-recip", str(pki["server"].cert_path), "-inkey", str(pki["server"].key_path),
                "-in", str(path)).stdout
    verified = run("smime", "-verify", "-CApath", str(pki["ca"].trust_dir), input=inner).stdout
    assert verified.replace(b"\r\n", b"\n").endswith(RECORD)
    text = run("cms", "-cmsout", "-print", "-in", str(path), "-inform", "SMIME").stdout.decode()
    assert f"aes-{cipher[3:]}-cbc" in text
    refused = run("smime", "-decrypt", "-recip", str(pki["other"].cert_path), "-inkey", str(pki["other"].key_path),
                  "-in", str(path), check=False)
    assert refused.returncode != 0


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("content", [RECORD, b"caf\xc3\xa9 = 3\ttabs \r\nand CRs\r\n", b"x" * 3000 + b"\n"])
def test_apel_ssm_receiver_accepts_our_bodies(pki, encrypt, content):
    body = smime.sign(content, pki["cred"])
    if encrypt:
        body = smime.encrypt(body, [pki["server"].certificate])
    dn = slash_dn(pki["bridge"].certificate.subject)
    message, signer = ssmpeer.receive(body.decode("ascii"), pki["server"].cert_path, pki["server"].key_path,
                                      pki["ca"].trust_dir, [dn])
    assert signer == dn == "/C=UK/O=eScience/CN=bridge.example.org"
    # SSM strips the text it gets from openssl, so a trailing newline of a 7bit body is lost there;
    # quoted-printable carries every byte, CRs included.
    assert message.encode() in (content, content.rstrip(b"\n"))


def test_ssm_refuses_a_signer_outside_its_dn_list(pki):
    body = smime.sign(RECORD, pki["cred"]).decode()
    with pytest.raises(ValueError, match="Signer not in valid DNs list"):
        ssmpeer.receive(body, pki["server"].cert_path, pki["server"].key_path, pki["ca"].trust_dir, ["/CN=someone else"])


def test_we_accept_what_openssl_and_ssm_senders_produce(pki):
    b = pki["bridge"]
    record = _write(pki, "record.txt", RECORD)
    signed_text = run("smime", "-sign", "-text", "-signer", str(b.cert_path), "-inkey", str(b.key_path),
                      "-in", str(record)).stdout  # what SSM's crypto.sign runs
    enc = run("smime", "-encrypt", "-aes256", str(pki["server"].cert_path), input=signed_text).stdout
    cms_signed = run("cms", "-sign", "-signer", str(b.cert_path), "-inkey", str(b.key_path), "-in", str(record),
                     "-md", "sha512").stdout
    cms_opaque = run("cms", "-sign", "-nodetach", "-signer", str(b.cert_path), "-inkey", str(b.key_path),
                     "-in", str(record)).stdout
    cms_enc = run("cms", "-encrypt", "-aes-128-cbc", "-recip", str(pki["server"].cert_path),
                  "-keyopt", "rsa_padding_mode:oaep", input=cms_signed).stdout
    for name, raw, encrypted in (("smime -sign -text", signed_text, False), ("then -encrypt -aes256", enc, True),
                                 ("cms -sign", cms_signed, False), ("cms -sign -nodetach", cms_opaque, False),
                                 ("cms -encrypt oaep", cms_enc, True)):
        opened = smime.open_message(raw, pki["server_cred"])
        assert opened.content == RECORD, name
        assert opened.encrypted == encrypted and opened.signer == b.certificate, name


def test_tampering_and_forgery_are_refused(pki):
    body = smime.sign(RECORD, pki["cred"])
    tampered = body.replace(b"WallDuration: 3600", b"WallDuration: 9600")
    with pytest.raises(cms.SignatureInvalid):
        smime.open_message(tampered)
    # A forger embeds the authorized certificate but signs with its own key (the attack SSM falls for).
    forger = pki["ca"].issue(role=Role.BRIDGE, cn="forger", out_dir=pki["dir"])
    forged_cred = Credential(pki["bridge"].certificate, forger.key)
    with pytest.raises(cms.SignatureInvalid):
        smime.open_message(smime.sign(RECORD, forged_cred))
    with pytest.raises(smime.NotSigned):
        smime.open_message(b"Content-Type: text/plain\r\n\r\n" + RECORD)
    with pytest.raises(cms.NotARecipient):
        smime.open_message(smime.encrypt(body, [pki["other"].certificate]), pki["server_cred"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=800))
def test_smime_parser_raises_only_its_errors(pki, data):
    try:
        smime.open_message(data, pki["server_cred"])
    except cms.CmsError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_mutated_real_messages_are_refused_cleanly(pki, position, junk):
    body = bytearray(smime.sign(RECORD, pki["cred"]))
    position %= len(body)
    body[position:position + len(junk)] = junk
    try:
        opened = smime.open_message(bytes(body), pki["server_cred"])
    except cms.CmsError:
        return
    # Whatever survives was signed by the bridge's key over the original record.  (A mutation inside
    # the embedded certificate can leave its key intact; the trust layer then refuses its CA signature.)
    assert opened.content == RECORD
    assert public_key_der(opened.signer) == public_key_der(pki["bridge"].certificate)
