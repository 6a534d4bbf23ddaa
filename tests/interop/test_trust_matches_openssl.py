"""Our validator and ``openssl verify -CApath -crl_check`` reach the same verdict.

The CAs and certificates here are made by the openssl CLI alone (``req -x509``,
``ca``, ``ca -gencrl``, ``rehash``), laid out like /etc/grid-security/certificates
with several CAs, an intermediate, CRLs and the signing_policy/namespaces files
grid CA packages ship.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.opensslpeer import OpensslCA, compat_subject, install, verify
from zmqsec.keys import errors
from zmqsec.keys.dn import slash_dn
from zmqsec.keys.pemfiles import load_certificate
from zmqsec.keys.trust import CrlPolicy, TrustStore, Usage

# Our refusal reason -> the X509_V_ERR_* numbers openssl may print for it.
OPENSSL_CODES = {
    "unknown-issuer": {2, 20},
    "expired": {10},
    "not-yet-valid": {9},
    "revoked": {23},
    "crl-missing": {3},
    "crl-expired": {12},
    "wrong-key-usage": {26},
    "not-a-ca": {24},
    "path-too-long": {25},
}
PURPOSE = {None: None, Usage.SIGN: "smimesign", Usage.ENCRYPT: "smimeencrypt"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Two independent CAs (one with an intermediate) plus a CA that is not trusted."""
    base = tmp_path_factory.mktemp("grid")
    root = OpensslCA(base / "root", "/DC=org/DC=example/CN=Example Root CA")
    issuing = OpensslCA(base / "issuing", "/DC=org/DC=example/CN=Example Issuing CA", parent=root)
    other = OpensslCA(base / "other", "/C=DE/O=OtherGrid/CN=OtherGrid CA")
    rogue = OpensslCA(base / "rogue", "/C=XX/O=Rogue/CN=Rogue CA")
    nocrl = OpensslCA(base / "nocrl", "/C=FR/O=NoCRL/CN=NoCRL CA")
    stale = OpensslCA(base / "stale", "/C=IT/O=Stale/CN=Stale CA")

    certs = {
        "good-host": issuing.issue("good-host", "host.example.org", "v3_host"),
        "good-sign": other.issue("good-sign", "signer.othergrid.de", "v3_sign"),
        "good-encrypt": issuing.issue("good-encrypt", "reader.example.org", "v3_encrypt"),
        "expired": other.issue("expired", "old.othergrid.de", "v3_sign",
                               startdate="20200101000000Z", enddate="20210101000000Z"),
        "not-yet-valid": other.issue("future", "future.othergrid.de", "v3_sign",
                                     startdate="20991231000000Z", enddate="21001231000000Z"),
        "revoked": issuing.issue("revoked", "revoked.example.org", "v3_host"),
        "unknown-ca": rogue.issue("rogue", "evil.example.org", "v3_sign"),
        "no-crl": nocrl.issue("nocrl", "host.nocrl.fr", "v3_sign"),
        "stale-crl": stale.issue("stale", "host.stale.it", "v3_sign"),
        "not-a-ca-issuer": other.issue("notca", "notca.othergrid.de", "v3_not_ca"),
    }
    issuing.revoke(certs["revoked"])
    # A leaf signed by a CA:FALSE certificate: openssl must refuse it as we do.
    notca = OpensslCA.from_certificate(base / "notca-as-ca", "/C=DE/O=OtherGrid/CN=notca.othergrid.de",
                                       certs["not-a-ca-issuer"], other.dir / "certs" / "notca.key", like=other)
    certs["issued-by-non-ca"] = notca.issue("leaf", "leaf.othergrid.de", "v3_sign")

    capath = base / "certificates"
    crls = [ca.gencrl() for ca in (root, issuing, other)]
    stale_crl = stale.gencrl(crl_hours=1)
    install(capath, root.cert, issuing.cert, other.cert, nocrl.cert, stale.cert, *crls, stale_crl)
    for ca, name in ((root, "root"), (other, "other")):
        (capath / f"{name}.signing_policy").write_text(f"access_id_CA X509 '{ca.subject}'\n")
        (capath / f"{name}.namespaces").write_text("TO Issuer \"...\" PERMIT Subject \".*\"\n")
    # The stale CRL expires one hour from now: judge both peers two hours ahead,
    # when every certificate above is still inside its window.
    return {"capath": capath, "certs": certs}


def _ours(trust: TrustStore, cert: Path, usage: Usage | None, at=None) -> str | None:
    try:
        trust.validate(load_certificate(cert), usage=usage, at=at)
        return None
    except errors.CertificateRejected as exc:
        return exc.reason


CASES = [
    ("good-host", None, None),
    ("good-sign", Usage.SIGN, None),
    ("good-encrypt", Usage.ENCRYPT, None),
    ("expired", None, "expired"),
    ("not-yet-valid", None, "not-yet-valid"),
    ("revoked", None, "revoked"),
    ("unknown-ca", None, "unknown-issuer"),
    ("no-crl", None, "crl-missing"),
    ("good-host", Usage.SIGN, "wrong-key-usage"),  # EKU serverAuth/clientAuth only
    ("good-encrypt", Usage.SIGN, "wrong-key-usage"),  # KU keyEncipherment only
    ("good-sign", Usage.ENCRYPT, "wrong-key-usage"),  # KU digitalSignature only
    ("issued-by-non-ca", None, "unknown-issuer"),  # issuer not in the store at all
]


@pytest.mark.parametrize("name,usage,expected", CASES, ids=[f"{c[0]}-{PURPOSE[c[1]]}" for c in CASES])
def test_openssl_made_certificates_get_the_same_verdict(grid, name, usage, expected):
    cert = grid["certs"][name]
    theirs = verify(grid["capath"], cert, purpose=PURPOSE[usage])
    ours = _ours(TrustStore.from_directory(grid["capath"]), cert, usage)
    assert ours == expected, theirs.text
    assert theirs.ok == (expected is None), theirs.text
    if expected is not None:
        assert theirs.error in OPENSSL_CODES[expected], theirs.text


def test_expired_crl_refused_by_both(grid):
    import datetime as dt
    import time

    later = int(time.time()) + 2 * 3600
    cert = grid["certs"]["stale-crl"]
    assert verify(grid["capath"], cert).ok  # CRL still current now
    assert _ours(TrustStore.from_directory(grid["capath"]), cert, None) is None
    theirs = verify(grid["capath"], cert, attime=later)
    ours = _ours(TrustStore.from_directory(grid["capath"]), cert, None,
                 at=dt.datetime.fromtimestamp(later, dt.timezone.utc))
    assert ours == "crl-expired"
    assert not theirs.ok and theirs.error in OPENSSL_CODES["crl-expired"], theirs.text


def test_non_ca_issuer_in_the_store_is_refused_by_both(grid, tmp_path):
    capath = tmp_path / "certificates"
    capath.mkdir()
    for f in grid["capath"].iterdir():
        if not f.is_symlink() and f.suffix == ".pem":
            (capath / f.name).write_bytes(f.read_bytes())
    install(capath, grid["certs"]["not-a-ca-issuer"])
    cert = grid["certs"]["issued-by-non-ca"]
    theirs = verify(capath, cert, crl_check=False)
    ours = TrustStore.from_directory(capath)
    with pytest.raises(errors.CertificateRejected) as exc:
        ours.validate(load_certificate(cert), crl=CrlPolicy.OFF)
    assert not theirs.ok
    assert theirs.error in OPENSSL_CODES[exc.value.reason] | {2, 20, 24, 79}, theirs.text


def test_chain_through_intermediate_and_several_cas(grid):
    trust = TrustStore.from_directory(grid["capath"])
    chain = trust.validate(load_certificate(grid["certs"]["good-host"]))
    dns = [slash_dn(c.subject) for c in chain.certificates]
    assert dns == [compat_subject(grid["certs"]["good-host"]),
                   compat_subject(grid["capath"] / "issuing-ca.pem"),
                   compat_subject(grid["capath"] / "root-ca.pem")]
    assert chain.subject_dn == dns[0]
    assert len(trust.ca_certificates) == 5
    assert trust.problems == ()


def test_crl_policy_if_present_accepts_a_ca_without_crl(grid):
    trust = TrustStore.from_directory(grid["capath"])
    cert = load_certificate(grid["certs"]["no-crl"])
    assert trust.validate(cert, crl=CrlPolicy.IF_PRESENT).subject_dn == "/C=FR/O=NoCRL/CN=host.nocrl.fr"
    assert verify(grid["capath"], grid["certs"]["no-crl"], crl_check=False).ok


def test_misnamed_file_is_ignored_as_openssl_ignores_it(grid, tmp_path):
    capath = tmp_path / "certificates"
    capath.mkdir()
    root_pem = next(f for f in grid["capath"].iterdir() if f.name == "root-ca.pem")
    (capath / "00000000.0").write_bytes(root_pem.read_bytes())
    trust = TrustStore.from_directory(capath)
    assert trust.ca_certificates == [] and "subject hash" in trust.problems[0]
