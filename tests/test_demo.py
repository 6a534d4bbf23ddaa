"""`zmqsec demo` (the README's first command) runs on local defaults and agrees with openssl."""

from __future__ import annotations


def test_demo_runs_and_every_verdict_matches_openssl(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--dir", tmp_path / "demo")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.endswith((" OK", " refused")) and ".pem" in line]
    assert len(rows) == 4
    for row in rows:
        ours, theirs = row[1], row[-1]
        assert ours == theirs or (ours == "refused" and theirs == "refused"), row
    assert any(r[0] == "dashboard.demo.pem" and r[1:3] == ["refused", "[revoked]"] for r in rows), out
    assert f"everything is in {tmp_path / 'demo'}" in out
