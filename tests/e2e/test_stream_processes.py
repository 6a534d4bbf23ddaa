"""The stream across real processes: `zmqsec publish` and `zmqsec subscribe` over tcp and ipc,
with SSM-style spools, a live revocation, a late joiner and an insider on the path."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

from kit import daemons
from kit.wire import Insider
from zmqsec.drivers.spool import OutgoingSpool
from zmqsec.protocol import frames

READERS = ("portal", "dashboard", "central")


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_spool_to_spool_with_live_revocation_and_late_joiner(site, transport):
    d = site.dir
    endpoint = daemons.endpoint(transport, d)
    logs = daemons.logs(site, "publisher", *READERS, "latecomer")
    outgoing = OutgoingSpool(d / "outgoing")
    publisher = daemons.publisher(site, endpoint)
    subs = {n: daemons.subscriber(site, n, endpoint) for n in READERS}
    try:
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 1 for n in READERS), what="readers to hold epoch 1", logs=logs)
        for i in range(100):
            outgoing.add(f"job {i:04d} wallclock=3600".encode())
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 100 for n in READERS), what="phase 1 delivery", logs=logs)
        assert list(outgoing.take()) == []  # the spool empties as messages are published

        # Revoke "dashboard" on the live publisher, from another process, as an operator would.
        removed = subprocess.run([sys.executable, "-m", "zmqsec.cli", "keys", "readers", "--registry", d / "readers.d",
                                  "remove", site.dn("dashboard")], capture_output=True, text=True)
        assert removed.returncode == 0, removed.stderr
        daemons.wait(lambda: daemons.status(site, "publisher").get("epoch") == 2, what="rekey after removal", logs=logs)
        assert daemons.status(site, "publisher")["last_rekey_cause"] == "readers-changed"
        daemons.wait(lambda: all(daemons.status(site, n).get("epoch") == 2 for n in ("portal", "central")), what="readers to switch", logs=logs)

        late = daemons.subscriber(site, "latecomer", endpoint)
        subs["latecomer"] = late
        daemons.wait(lambda: daemons.status(site, "latecomer").get("epoch") == 2, what="late joiner to get the current key", logs=logs)
        for i in range(100, 200):
            outgoing.add(f"job {i:04d} wallclock=3600".encode())
        daemons.wait(lambda: all(len(daemons.incoming(site, n)) == 200 for n in ("portal", "central")), what="phase 2 delivery", logs=logs)
        daemons.wait(lambda: len(daemons.incoming(site, "latecomer")) == 100, what="late joiner delivery", logs=logs)
        daemons.wait(lambda: daemons.status(site, "dashboard").get("rejected", {}).get("no-key", 0) == 100,
              what="revoked reader to give up on phase 2", timeout=20, logs=logs)
    finally:
        daemons.stop(publisher, *subs.values())

    expected = [f"job {i:04d} wallclock=3600" for i in range(200)]
    for name in ("portal", "central"):
        messages = daemons.incoming(site, name)
        assert sorted(m["body"] for m in messages) == expected
        assert {m["signer"] for m in messages} == {site.publisher_dn} == {"/O=zmqsec test/CN=publisher.example.org"}
        assert len({m["empaid"] for m in messages}) == 200
        assert daemons.status(site, name)["gaps"] == 0
    # The revoked reader read everything before the rekey and nothing after it.
    assert sorted(m["body"] for m in daemons.incoming(site, "dashboard")) == expected[:100]
    assert daemons.status(site, "dashboard")["rejected"].get("not-a-recipient", 0) >= 1
    assert sorted(m["body"] for m in daemons.incoming(site, "latecomer")) == expected[100:]


def _await_data_frame(tap, seq: int, timeout: float = 20.0) -> None:
    """Read the tap on the publisher until its data frame ``seq`` has gone out."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if tap.poll(int(left * 1000) + 1):
            frame = frames.decode(tap.recv_multipart())
            if isinstance(frame, frames.DataFrame) and frame.seq >= seq:
                return
    raise AssertionError(f"the publisher did not send data frame {seq} within {timeout:.0f}s")


def test_insider_on_the_path_cannot_inject(site):
    """An authorized reader ('dashboard') relays into portal's feed and forges frames with the real data key."""
    d = site.dir
    endpoint = daemons.endpoint("tcp", d)
    ctx = zmq.Context.instance()
    insider_out = ctx.socket(zmq.PUB)
    insider_port = insider_out.bind_to_random_port("tcp://127.0.0.1")
    logs = daemons.logs(site, "publisher", "portal")
    publisher = daemons.publisher(site, endpoint)
    victim = daemons.subscriber(site, "portal", endpoint, f"tcp://127.0.0.1:{insider_port}")
    insider = Insider(site["dashboard"], site.trust)
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.SUBSCRIBE, b"apel.jobs\x00")
    tap.connect(endpoint)
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="victim to hold the key", logs=logs)
        deadline = time.monotonic() + 20
        while not insider.keys and time.monotonic() < deadline:
            if tap.poll(100):
                insider.learn(tap.recv_multipart())
        assert insider.keys, "insider never obtained the data key"
        [(stream_id, epoch)] = insider.keys
        outgoing = OutgoingSpool(d / "outgoing")
        forged = 0
        for i in range(20):
            outgoing.add(f"genuine {i}".encode())
            # Forged right away, so they race the publisher's frame i + 1 (picked up from the spool within 50 ms).
            for seq in (i + 1, 1000 + i):  # a sequence the publisher uses, and one it never will
                insider_out.send_multipart(insider.forge(stream_id, epoch, seq, b"forged usage record"))
                forged += 1
            _await_data_frame(tap, i + 1)  # then the genuine frame, before the next round
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 20, what="genuine delivery", logs=logs)
        daemons.wait(lambda: sum(daemons.status(site, "portal").get("rejected", {}).values()) >= 20, timeout=15,
              what="forgeries to be rejected", logs=logs)
    finally:
        daemons.stop(publisher, victim)
        tap.close()
        insider_out.close()
    bodies = sorted(m["body"] for m in daemons.incoming(site, "portal"))
    assert bodies == sorted(f"genuine {i}" for i in range(20))
    rejected = daemons.status(site, "portal")["rejected"]
    assert set(rejected) <= {"forged", "unverified", "replayed-sequence", "duplicate"}, rejected
    assert sum(rejected.values()) >= 20


def test_config_file_and_bad_config(site, tmp_path, run_cli):
    ini = tmp_path / "publisher.ini"
    ini.write_text("[stream]\nname = apel.jobs\n[certificates]\ncertificate = /x.pem\nkey = /x.key\ncapath = /x\n"
                   "[publisher]\nendpoint = tcp://127.0.0.1:0\n[readers]\nregistry = /x\n[rotation]\nmax_age = soon\n")
    code, _, err = run_cli("publish", "--config", ini)
    assert code == 1 and "[rotation] max_age: 'soon' is not a number" in err
    ini.write_text("[stream]\nname = apel.jobs\n[broker]\nhost = x\n")
    code, _, err = run_cli("publish", "--config", ini)
    assert code == 1 and "[broker] host is not a known option" in err
    ini.write_text("[stream]\nname = apel.jobs\n")
    code, _, err = run_cli("publish", "--config", ini)
    assert code == 1 and "[certificates] certificate is required" in err and "--certificate" in err
    ini.write_text("not an ini file")
    code, _, err = run_cli("publish", "--config", ini)
    assert code == 1 and "not a valid INI file" in err
    os.chmod(site.certs["publisher"].key_path, 0o644)
    code, _, err = run_cli("publish", "--stream", "s", "--certificate", site.certs["publisher"].cert_path,
                           "--key", site.certs["publisher"].key_path, "--capath", site.trust_dir,
                           "--registry", site.registry_dir, "--endpoint", "tcp://127.0.0.1:0")
    assert code == 1 and "chmod 600" in err
