"""`zmqsec demo` (the README's first command): the whole system on local defaults, checked from what it leaves behind.

With the broker ``./run test`` started (``ZMQSEC_TEST_BROKER``: its directory, or HOST:PORT) the demo uses it;
without one it is pointed at a free port, so it starts (and stops) its own ActiveMQ.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kit.ports import HOST, free_port
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.tools.activemq import LocalBroker

RECORDS = 60


def _broker() -> str:
    given = os.environ.get("ZMQSEC_TEST_BROKER", "")
    if given and (Path(given) / "broker.json").exists():
        return f"127.0.0.1:{json.loads((Path(given) / 'broker.json').read_text())['stomp_ports'][0]}"
    if re.fullmatch(r"[\w.-]+:\d+", given):
        return given
    return f"{HOST}:{free_port()}"  # nothing listens here: the demo starts a private broker


def _job_indexes(path: Path) -> list[int]:
    bodies = [m["body"] for m in IncomingSpool(path).messages()]
    return sorted(int(m.group(1)) for b in bodies for m in re.finditer(r"^LocalJobId: (\d+)\.", b, re.M))


def test_demo_streams_revokes_a_reader_kills_a_reader_and_the_bridge_and_loses_nothing(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "zmqsec.cli", "demo", "--dir", str(workdir), "--records", str(RECORDS),
                             "--rate", "60", "--broker", _broker()], capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "every check passed" in out and f"everything is in {workdir}" in out

    # The certificates it made: zmqsec's verdict agrees with openssl's on every one.
    rows = [line.split() for line in out.splitlines() if re.match(r"\S+\.demo\.pem ", line)]
    assert len(rows) == 6 and all(row[2] == row[-1] == "OK" for row in rows), rows

    # Shown live: progress lines, the rekey, the removed reader's count frozen while the others grow.
    half = RECORDS // 2
    assert "publisher rekeyed: epoch 1 -> 2 (readers-changed" in out
    assert re.search(rf"portal {RECORDS} .*dashboard {half} \(removed\).*repository {RECORDS} ", out)
    # ... and a reader and the bridge killed with kill -9 at three quarters, restarted, catching up by replay.
    kill_at, back_at = RECORDS * 3 // 4, RECORDS * 7 // 8
    assert f"kill -9 portal and bridge after record {kill_at}" in out
    assert re.search(rf"portal {kill_at} \(killed\).*repository {back_at} .*bridge->broker killed", out)

    # Checked from the spools and status files, not from the demo's own words.
    assert _job_indexes(workdir / "incoming" / "portal") == list(range(RECORDS))
    assert _job_indexes(workdir / "incoming" / "repository") == list(range(RECORDS))  # behind the relay
    assert _job_indexes(workdir / "incoming" / "dashboard") == list(range(half))  # nothing after the rekey
    assert _job_indexes(workdir / "central" / "incoming") == list(range(RECORDS))  # through the broker, verified

    def status(name):
        return json.loads((workdir / "status" / f"{name}.json").read_text())

    assert status("dashboard")["epoch"] == 1
    assert all(status(n)["epoch"] == 2 for n in ("publisher", "portal", "repository", "bridge"))
    assert status("central")["accepted"] == RECORDS  # each record once, though the bridge was killed
    assert status("portal")["repaired"] > 0 and status("bridge")["repaired"] > 0  # caught up by replay
    assert status("portal")["unrecoverable"] == status("bridge")["unrecoverable"] == 0
    central = IncomingSpool(workdir / "central" / "incoming").messages()
    assert len({m["empaid"] for m in central}) == RECORDS
    assert {m["signer"] for m in central} == {"/O=zmqsec demo/CN=bridge.demo"}
    if (workdir / "broker").exists():
        assert not LocalBroker.from_directory(workdir / "broker").running()
