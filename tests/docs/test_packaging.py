"""What `pip install .` puts in an environment: the README's layout and dependency claims."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from kit.paths import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds from this tree (with setuptools from the index, as any user's pip would)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = out.glob("zmqsec-*.whl")
    return zipfile.ZipFile(path)


def test_an_installed_zmqsec_claims_no_generic_import_name(wheel):
    top = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"zmqsec"}
    assert "zmqsec/keys/trust.py" in wheel.namelist() and "zmqsec/bridges/smime.py" in wheel.namelist()
    assert "zmqsec/tools/bench/__init__.py" in wheel.namelist()


def test_matplotlib_comes_only_with_the_tools_extra(wheel):
    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    plots = [line for line in requires if "matplotlib" in line]
    assert plots and all('extra == "tools"' in line for line in plots), requires
