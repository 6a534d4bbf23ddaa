"""Slash-form DNs match what openssl (and so APEL SSM) prints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.dn import parse_slash_dn, slash_dn
from keys.pemfiles import load_certificate
from opensslpeer import compat_subject, run

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


@pytest.mark.parametrize("bad", ["", "CN=x", "/", "/CN", "/XX=1", "/CN="])
def test_malformed_dns_are_value_errors(bad):
    with pytest.raises(ValueError):
        parse_slash_dn(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parser_only_raises_value_error(text):
    try:
        name = parse_slash_dn(text)
    except ValueError:
        return
    assert slash_dn(name).count("=") >= 1
