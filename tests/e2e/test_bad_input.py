"""Bad key material gets a one-line error that names the file, never a traceback (also as an unprivileged user).

(The certificate parser's fuzzing is in tests/spec/test_decoders_fuzz.py.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from zmqsec.keys.ca import Role
from zmqsec.keys.errors import InsecureKeyFile, KeyFileError, KeyMismatch
from zmqsec.keys.pemfiles import Credential, load_private_key


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zmqsec: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_garbage_pem_certificate(tmp_path, ca, run_cli):
    bad = tmp_path / "garbage.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    code, _, err = run_cli("keys", "verify", "--trust", ca.trust_dir, bad)
    _one_line_error(code, err, str(bad), "not a PEM or DER X.509 certificate")


def test_missing_certificate_and_trust_dir(tmp_path, ca, run_cli):
    code, _, err = run_cli("keys", "verify", "--trust", ca.trust_dir, tmp_path / "nope.pem")
    _one_line_error(code, err, "nope.pem", "not found")
    issued = ca.issue(role=Role.READER, cn="r", out_dir=tmp_path)
    code, _, err = run_cli("keys", "verify", "--trust", tmp_path / "no-such-dir", issued.cert_path)
    _one_line_error(code, err, "no-such-dir", "trust directory not found")
    code, _, err = run_cli("keys", "verify", "--trust", issued.cert_path, issued.cert_path)
    _one_line_error(code, err, "not a directory")


def test_key_that_does_not_match_its_certificate(tmp_path, ca, run_cli):
    a = ca.issue(role=Role.PUBLISHER, cn="a", out_dir=tmp_path)
    b = ca.issue(role=Role.PUBLISHER, cn="b", out_dir=tmp_path)
    with pytest.raises(KeyMismatch, match="does not match"):
        Credential.load(a.cert_path, b.key_path)
    code, _, err = run_cli("keys", "verify", "--trust", ca.trust_dir, "--key", b.key_path, a.cert_path)
    _one_line_error(code, err, str(b.key_path), "does not match")
    assert Credential.load(a.cert_path, a.key_path).certificate == a.certificate


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_key_is_refused_with_the_fix(tmp_path, ca, mode, run_cli):
    issued = ca.issue(role=Role.PUBLISHER, cn="p", out_dir=tmp_path)
    os.chmod(issued.key_path, mode)
    with pytest.raises(InsecureKeyFile) as exc:
        load_private_key(issued.key_path)
    assert f"chmod 600 {issued.key_path}" in str(exc.value)
    code, _, err = run_cli("keys", "verify", "--trust", ca.trust_dir, "--key", issued.key_path, issued.cert_path)
    _one_line_error(code, err, f"mode {mode:04o}", "chmod 600")
    # The CA's own key is guarded the same way.
    os.chmod(ca.directory / "ca.key", mode)
    code, _, err = run_cli("keys", "issue", "--ca", ca.directory, "--role", "reader", "--cn", "x", "--out", tmp_path)
    _one_line_error(code, err, "ca.key", "chmod 600")


def test_garbage_private_key(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(bad)


def _as_nobody(func) -> str:
    """Run ``func`` in a forked child with root dropped to nobody; return what it returns (a str)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: modules are already imported, only the data path is touched
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(write, func().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    os.waitpid(pid, 0)
    return text


def test_unreadable_trust_directory_as_an_unprivileged_user(ca, run_cli):
    """Root reads everything, so the CLI runs as nobody against a 0700 directory."""
    work = Path(tempfile.mkdtemp(prefix="zmqsec-perm-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        locked = work / "locked"
        shutil.copytree(ca.trust_dir, locked)
        os.chmod(locked, 0o700)
        public_cert = work / "cert.pem"
        public_cert.write_bytes((ca.directory / "ca.pem").read_bytes())
        os.chmod(public_cert, 0o644)

        def verify_as_nobody() -> str:
            code, _, err = run_cli("keys", "verify", "--trust", locked, public_cert)
            return f"{code}\n{err}"

        code, err = _as_nobody(verify_as_nobody).split("\n", 1)
        _one_line_error(int(code), err, str(locked), "permission denied")
    finally:
        shutil.rmtree(work)
