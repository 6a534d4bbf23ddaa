"""What ``zmqsec keys`` issues, the openssl CLI accepts; what it revokes, openssl refuses."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509

from kit.opensslpeer import crl_hash, run, subject_hash, verify
from zmqsec.keys.ca import CertificateAuthority, KeyType, Role
from zmqsec.keys.hashdir import name_hash, rehash
from zmqsec.keys.pemfiles import load_crl
from zmqsec.keys.trust import TrustStore, Usage

ROLE_PURPOSES = {
    Role.PUBLISHER: ["smimesign", "sslclient"],
    Role.READER: ["smimeencrypt"],
    Role.BRIDGE: ["smimesign", "smimeencrypt", "sslclient"],
    Role.SERVER: ["smimesign", "smimeencrypt", "sslserver", "sslclient"],
}


def test_init_ca_lays_out_a_hashed_trust_directory(ca):
    names = sorted(p.name for p in ca.trust_dir.iterdir())
    assert names == [f"{subject_hash(ca.directory / 'ca.pem')}.0", f"{crl_hash(ca.crl_path)}.r0"]
    assert stat.S_IMODE((ca.directory / "ca.key").stat().st_mode) == 0o600
    run("verify", "-CApath", str(ca.trust_dir), "-crl_check", str(ca.directory / "ca.pem"))


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("key_type", [KeyType.RSA, KeyType.EC])
def test_issued_certificates_verify_with_openssl_for_their_purposes(ca, tmp_path, role, key_type):
    issued = ca.issue(role=role, cn=f"{role.value}.example.org", out_dir=tmp_path / "out", key_type=key_type)
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    for purpose in ROLE_PURPOSES[role]:
        if purpose == "smimeencrypt" and key_type is KeyType.EC:
            continue  # OpenSSL's smimeencrypt asks keyEncipherment, which EC keys cannot have
        verdict = verify(ca.trust_dir, issued.cert_path, purpose=purpose)
        assert verdict.ok, f"{purpose}: {verdict.text}"
    # The key on disk is the certificate's key, as openssl sees it.
    pub_from_key = run("pkey", "-in", str(issued.key_path), "-pubout").stdout
    pub_from_cert = run("x509", "-in", str(issued.cert_path), "-noout", "-pubkey").stdout
    assert pub_from_key == pub_from_cert


def test_reader_certificate_cannot_sign(ca, tmp_path):
    issued = ca.issue(role=Role.READER, cn="reader", out_dir=tmp_path)
    assert verify(ca.trust_dir, issued.cert_path, purpose="smimesign").error == 26
    with pytest.raises(Exception) as exc:
        TrustStore.from_directory(ca.trust_dir).validate(issued.certificate, usage=Usage.SIGN)
    assert exc.value.reason == "wrong-key-usage"


def _crl_number(ca) -> int:
    return load_crl(ca.crl_path).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoked_certificate_fails_openssl_crl_check(ca, tmp_path, run_cli):
    keep = ca.issue(role=Role.READER, cn="keep", out_dir=tmp_path)
    gone = ca.issue(role=Role.READER, cn="gone", out_dir=tmp_path)
    number_before = _crl_number(ca)
    code, out, err = run_cli("keys", "revoke", "--ca", ca.directory, gone.cert_path, "--reason", "key_compromise")
    assert code == 0, err
    theirs = verify(ca.trust_dir, gone.cert_path)
    assert not theirs.ok and theirs.error == 23, theirs.text
    assert verify(ca.trust_dir, keep.cert_path).ok
    assert _crl_number(ca) == number_before + 1
    text = run("crl", "-in", str(ca.crl_path), "-noout", "-text").stdout.decode()
    assert f"{gone.certificate.serial_number:X}" in text.replace(":", "").upper()
    assert "Key Compromise" in text
    # Revoking by serial, again, is idempotent.
    code, _, err = run_cli("keys", "revoke", "--ca", ca.directory, f"{gone.certificate.serial_number:x}")
    assert code == 0, err
    assert len(list(load_crl(ca.crl_path))) == 1


def test_crl_refresh_extends_validity(ca, run_cli):
    before = load_crl(ca.crl_path)
    code, out, _ = run_cli("keys", "crl", "--ca", ca.directory)
    assert code == 0 and "re-signed" in out
    after = load_crl(ca.crl_path)
    assert after.next_update_utc >= before.next_update_utc
    assert (after.next_update_utc - after.last_update_utc) == (before.next_update_utc - before.last_update_utc)


def test_cli_issue_and_verify_round_trip(tmp_path, run_cli):
    code, out, err = run_cli("keys", "init-ca", tmp_path / "ca", "--key-type", "ec", "--subject", "/O=Site/CN=Site CA")
    assert code == 0, err
    code, out, err = run_cli("keys", "issue", "--ca", tmp_path / "ca", "--role", "server", "--cn", "broker.site.org",
                             "--san", "127.0.0.1", "--out", tmp_path / "out")
    assert code == 0, err
    cert = tmp_path / "out" / "broker.site.org.pem"
    text = run("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName").stdout.decode()
    assert "DNS:broker.site.org" in text and "IP Address:127.0.0.1" in text
    code, out, err = run_cli("keys", "verify", "--trust", tmp_path / "ca" / "certificates", "--usage", "sign",
                             "--key", tmp_path / "out" / "broker.site.org.key", cert)
    assert code == 0 and "OK /O=Site/CN=broker.site.org" in out, err
    assert verify(tmp_path / "ca" / "certificates", cert, purpose="sslserver").ok


def test_name_hash_and_rehash_agree_with_openssl(tmp_path):
    # Odd spacing and case exercise OpenSSL's canonical name encoding.
    subjects = ["/C=UK/O=eScience  Grid/OU=CLRC/L=RAL/CN=  Host.Example.ORG ",
                "/DC=org/DC=Example/O=Grid+OU=Ops/CN=Zoë Müller", "/CN=x"]
    for i, subject in enumerate(subjects):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-utf8",
            "-multivalue-rdn", "-keyout", str(tmp_path / f"k{i}.key"), "-out", str(tmp_path / f"c{i}.pem"),
            "-subj", subject, "-days", "1")
        from zmqsec.keys.pemfiles import load_certificate

        assert name_hash(load_certificate(tmp_path / f"c{i}.pem").subject) == subject_hash(tmp_path / f"c{i}.pem")
    made = {link.name for link, _ in rehash(tmp_path)}
    assert made == {f"{subject_hash(tmp_path / f'c{i}.pem')}.0" for i in range(3)}


def test_init_ca_refuses_to_overwrite(ca):
    from zmqsec.keys.errors import AuthorityError

    with pytest.raises(AuthorityError, match="already holds a CA"):
        CertificateAuthority.init(ca.directory)
