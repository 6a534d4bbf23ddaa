"""Shared fixtures over the kit (tests/kit): a zmqsec CA, a stream site, the in-process CLI, the broker
the test command started.

The suite is split by kind: ``spec/`` (the protocol and the machines), ``interop/`` (against the openssl CLI
and APEL SSM's receiver), ``e2e/`` (real processes, the real broker), ``docs/`` (what the README and
docs/deploy claim).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: `from kit import ...`

from kit.pki import Pki, new_ca, stream_site  # noqa: E402
from zmqsec.keys.ca import CertificateAuthority, Role  # noqa: E402


# The files that load the one broker hard take turns on one xdist worker; every other file stays whole on one
# worker, as --dist loadfile keeps it.  (pytest-xdist's own xdist_group marks do not reach its scheduler under
# pytest 9, so the grouping is a scheduler of ours.)
BROKER_HEAVY = {"test_bench.py", "test_bridge_broker.py", "test_bridge_loses_nothing.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Schedule whole files, the broker-heavy ones as one unit."""
    from xdist.scheduler import LoadFileScheduling

    class BrokerHeavyTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "broker-heavy" if Path(scope).name in BROKER_HEAVY else scope

    return BrokerHeavyTogether(config, log)


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    """A fresh zmqsec CA, ``/C=UK/O=zmqsec test/CN=Test CA`` (RSA 2048 to keep set-up quick)."""
    return new_ca(tmp_path / "ca", "/C=UK/O=zmqsec test/CN=Test CA")


@pytest.fixture
def site(tmp_path) -> Pki:
    """A stream site in ``tmp_path``: a CA, a publisher and four registered readers (portal, dashboard, central,
    latecomer), for tests that run the stream's daemons (:mod:`kit.daemons`)."""
    return stream_site(tmp_path)


@pytest.fixture(scope="session")
def stream_pki(tmp_path_factory) -> Pki:
    """One CA for the tests that drive the stream in-process: a publisher, readers portal, dashboard and central,
    an outsider (a valid reader certificate no reader set includes) and a bridge (another signer)."""
    return Pki.create(tmp_path_factory.mktemp("stream-pki"), "/O=zmqsec test/CN=Stream CA",
                      publisher=Role.PUBLISHER, portal=Role.READER, dashboard=Role.READER, central=Role.READER,
                      outsider=Role.READER, bridge=Role.BRIDGE)


@pytest.fixture
def run_cli(capsys):
    """Call ``zmqsec.cli.main`` in-process; return (exit code, stdout, stderr)."""
    from zmqsec.cli.main import main

    def call(*argv: str):
        """``zmqsec ARGV``: (exit code, stdout, stderr)."""
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
