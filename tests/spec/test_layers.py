"""Import direction is checked, not hoped for (house rules 1 and 13).

The contracts live in pyproject.toml ([tool.importlinter]) and are checked by
import-linter.  import-linter only sees modules inside a package's own
directory, and our keys/ and bridges/ folders install as zmqsec.keys and
zmqsec.bridges (setuptools package-dir), so the check runs on a copy of the
tree in its installed layout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kit.paths import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PURE = ["zmqsec.errors", "zmqsec.crypto.der", "zmqsec.crypto.cms", "zmqsec.crypto.enveloped", "zmqsec.crypto.signed",
        "zmqsec.crypto.signing", "zmqsec.protocol.primitives", "zmqsec.protocol.frames", "zmqsec.protocol.datacipher",
        "zmqsec.protocol.announce", "zmqsec.protocol.checkpoint", "zmqsec.protocol.groups", "zmqsec.machines.sender",
        "zmqsec.machines.receiver", "zmqsec.keys.trust", "zmqsec.keys.registry", "zmqsec.keys.ca", "zmqsec.bridges.smime"]
IO_MODULES = ("zmq", "stomp", "asyncio", "subprocess", "dirq")  # (cryptography itself loads the stdlib socket)


def _installed_layout(target: Path) -> Path:
    """The tree as pip installs it: zmqsec/, with keys/ and bridges/ inside as zmqsec/keys, zmqsec/bridges."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "zmqsec", target / "zmqsec", ignore=ignore)
    shutil.copytree(ROOT / "keys", target / "zmqsec" / "keys", ignore=ignore)
    shutil.copytree(ROOT / "bridges", target / "zmqsec" / "bridges", ignore=ignore)
    return target


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold(tmp_path):
    result = _lint(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, line", [
    ("zmqsec/protocol/frames.py", "from zmqsec.drivers import publisher  # a codec reaching up\n"),
    ("zmqsec/machines/receiver.py", "from ..drivers.subscriber import Subscriber  # relative, still caught\n"),
    ("zmqsec/crypto/der.py", "import zmq  # a pure module loading a socket library\n"),
    ("zmqsec/keys/trust.py", "from zmqsec.machines import sender  # the trust layer importing the stream\n"),
    ("zmqsec/bridges/stomp_out.py", "from zmqsec.cli import publish  # a bridge importing a CLI module\n"),
])
def test_the_contracts_catch_a_wrong_import(tmp_path, module, line):
    tree = _installed_layout(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + line)
    result = _lint(tree)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-3000:]


def test_pure_modules_import_without_sockets_or_zeromq():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PURE)
            + f"loaded = sorted(m for m in {IO_MODULES!r} if m in sys.modules)\n"
            + "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_package_directory_is_installed():
    """A package folder missing from pyproject's list would be left out of a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "zmqsec").parts).join(["zmqsec.", ""]).rstrip(".")
             for p in (ROOT / "zmqsec").rglob("__init__.py")}
    found |= {"zmqsec.keys", "zmqsec.bridges"}
    assert found == listed
