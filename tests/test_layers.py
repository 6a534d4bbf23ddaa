"""Import direction is checked, not hoped for (house rule 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"socket", "zmq", "stomp", "subprocess", "asyncio", "selectors", "dirq"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "keys").glob("*.py")), ids=lambda p: p.name)
def test_keys_imports_neither_the_stream_nor_the_bridges(path):
    assert not _imports(path) & {"zmqsec", "bridges"}


# Modules without network I/O: no sockets, no subprocesses, no queues (keys/ reads certificate files itself).
PURE = ["keys/errors.py", "keys/dn.py", "keys/hashdir.py", "keys/trust.py", "keys/registry.py", "keys/ca.py",
        "keys/pemfiles.py", "zmqsec/primitives.py", "zmqsec/frames.py", "zmqsec/cms.py", "zmqsec/smime.py",
        "zmqsec/announce.py", "zmqsec/checkpoint.py", "zmqsec/sender.py", "zmqsec/receiver.py"]


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_no_network_io(rel):
    assert not _imports(ROOT / rel) & IO_MODULES


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "zmqsec").glob("*.py") if p.name != "cli.py"), ids=lambda p: p.name)
def test_the_stream_does_not_import_the_bridges(path):
    """Only the CLI (the top layer) brings the two together."""
    assert "bridges" not in _imports(path)


def test_the_contract_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import zmq\nfrom bridges.activemq import LocalBroker\n")
    assert _imports(bad) == {"zmq", "bridges"}
