"""Shared fixtures: a zmqsec CA, the openssl-CLI peer, the broker the test command started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from keys.ca import CertificateAuthority  # noqa: E402
from keys.ca import Role  # noqa: E402
from keys.dn import parse_slash_dn  # noqa: E402
from keys.registry import ReaderRegistry  # noqa: E402


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    """A fresh zmqsec CA (RSA 2048 to keep set-up quick)."""
    return CertificateAuthority.init(tmp_path / "ca", subject=parse_slash_dn("/C=UK/O=zmqsec test/CN=Test CA"), rsa_bits=2048)


@pytest.fixture
def site(tmp_path):
    """A CA, a publisher and four registered readers, for tests that run the stream's daemons."""
    ca = CertificateAuthority.init(tmp_path / "ca", subject=parse_slash_dn("/O=zmqsec test/CN=Site CA"), rsa_bits=2048)
    certs = {"publisher": ca.issue(role=Role.PUBLISHER, cn="publisher.example.org", out_dir=tmp_path / "certs")}
    registry = ReaderRegistry(tmp_path / "readers.d")
    for name in ("portal", "dashboard", "central", "latecomer"):
        certs[name] = ca.issue(role=Role.READER, cn=f"{name}.example.org", out_dir=tmp_path / "certs")
        registry.add(certs[name].certificate)
    return {"dir": tmp_path, "ca": ca, "certs": certs, "registry": registry}


@pytest.fixture
def run_cli(capsys):
    """Call ``zmqsec.cli.main`` in-process; return (exit code, stdout, stderr)."""
    from zmqsec.cli import main

    def call(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="session")
def broker() -> dict:
    """The ActiveMQ that ``./run test`` started: its broker.json plus the CA directory for TLS clients."""
    base = os.environ.get("ZMQSEC_TEST_BROKER")
    if not base:
        pytest.fail("no broker: run the suite with ./run test, which starts ActiveMQ on loopback")
    state = json.loads((Path(base) / "broker.json").read_text())
    state["ca_dir"] = Path(os.environ["ZMQSEC_TEST_BROKER_CA"])
    return state
