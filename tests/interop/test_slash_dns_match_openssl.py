"""Slash-form DNs match what openssl (and so APEL SSM) prints; the parser reads openssl's form back.

(The parser's refusals and its fuzzing are in tests/spec/test_decoders_fuzz.py.)"""

from __future__ import annotations

import pytest

from kit.opensslpeer import compat_subject, run
from zmqsec.keys.dn import parse_slash_dn, slash_dn
from zmqsec.keys.pemfiles import load_certificate

SUBJECTS = [
    "/C=UK/O=eScience/OU=CLRC/L=RAL/CN=host.example.org",
    "/DC=org/DC=terena/DC=tcs/C=NL/O=Example Uni/CN=Robot - accounting",
    "/C=DE/O=GermanGrid/OU=DESY/CN=host/grid.desy.de/emailAddress=ops@desy.de",
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_slash_dn_is_openssl_compat_form(tmp_path, subject):
    escaped = subject.replace("host/grid", "host\\/grid")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "c.pem"), "-subj", escaped, "-days", "1")
    cert = load_certificate(tmp_path / "c.pem")
    assert slash_dn(cert.subject) == compat_subject(tmp_path / "c.pem")
    assert parse_slash_dn(escaped) == cert.subject
