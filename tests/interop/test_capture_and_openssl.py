"""Anyone may record the stream; only authorized readers can read it -- and openssl agrees.

A keyless `zmqsec capture` process records a live stream, writing each key
announcement's CMS to .der files.  The openssl CLI then decrypts every
announcement for each authorized reader and for no one else, and verifies the
publisher's signature against the CA directory.  `zmqsec inspect` and
`zmqsec decrypt` read the same capture later.
"""

from __future__ import annotations

import re
import subprocess
import sys

import msgpack
import pytest
import zmq

from kit.opensslpeer import run
from kit.wire import WireSender
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol.primitives import HEADER_ATTRIBUTE, decode_key_record, header_digest

READERS = ("portal", "dashboard")  # the outsider is the session PKI's valid reader certificate left out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, stream_pki):
    """A stream of 30 records over three epochs for portal and dashboard, recorded by a `zmqsec capture` process."""
    d = tmp_path_factory.mktemp("capture")
    sender = WireSender("apel.jobs", stream_pki["publisher"],
                        ReaderSet(tuple(Reader(stream_pki.certs[n].certificate) for n in READERS)),
                        RotationPolicy(max_messages=10, checkpoint_max=5))
    messages = sender.start(0.0)
    for i in range(30):
        messages += sender.publish(b"record %d" % i, 0.0)
    messages += sender.flush(0.0)
    assert len(messages) == 40  # 3 announcements, the run frame, 30 data frames, 6 checkpoints
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.XPUB)  # XPUB: we see the capture's subscription instead of sleeping
    port = out.bind_to_random_port("tcp://127.0.0.1")
    capture = subprocess.Popen([sys.executable, "-m", "zmqsec.cli", "capture", f"tcp://127.0.0.1:{port}",
                                "--out", str(d / "cap"), "--duration", "20", "--count", str(len(messages))],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert out.poll(20000), "capture process never subscribed"
    assert out.recv()[:1] == b"\x01"
    for m in messages:
        out.send_multipart(m)
    output, _ = capture.communicate(timeout=30)
    out.close()
    assert capture.returncode == 0 and b"captured 40 frames" in output, output
    return {"pki": stream_pki, "cap": d / "cap", "stream_id": sender.stream_id}


def test_every_announcement_decrypts_with_openssl_for_authorized_readers_only(recorded):
    envelopes = sorted(p for p in recorded["cap"].glob("announcement-*.der") if not p.name.endswith(".sig.der"))
    assert len(envelopes) == 3  # epochs 1..3 for 30 messages at 10 per epoch
    for env in envelopes:
        for name in READERS:
            r = recorded["pki"].certs[name]
            plain = run("cms", "-decrypt", "-inform", "DER", "-in", str(env), "-recip", str(r.cert_path),
                        "-inkey", str(r.key_path)).stdout
            topic, stream_id, epoch, key = decode_key_record(plain)  # key confirmation holds
            assert topic == b"apel.jobs" and f"epoch{epoch}" in env.name
        outsider = recorded["pki"].certs["outsider"]
        refused = run("cms", "-decrypt", "-inform", "DER", "-in", str(env), "-recip", str(outsider.cert_path),
                      "-inkey", str(outsider.key_path), check=False)
        assert refused.returncode != 0
        # The publisher's signature over the envelope verifies against the CA directory.
        verified = run("cms", "-verify", "-inform", "DER", "-in", str(env.with_suffix("").with_suffix(".sig.der")),
                       "-content", str(env), "-binary", "-CApath", str(recorded["pki"].trust_dir),
                       "-purpose", "smimesign", "-out", "/dev/null", check=False)
        assert verified.returncode == 0, verified.stderr
        text = run("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(env)).stdout.decode()
        assert text.count("rsaesOaep") == 2 and "aes-256-cbc" in text
        # openssl reads the header attribute among the signed attributes (§4.3): the digest of this frame's header.
        epoch = int(re.search(r"epoch(\d+)", env.name).group(1))
        assert _signed_header(env.with_suffix("").with_suffix(".sig.der")) == \
            header_digest(b"apel.jobs\x00K", recorded["stream_id"], epoch)


def _signed_header(signature) -> bytes:
    """The value of the header attribute, as `openssl cms -cmsout -print` shows it (a hex dump)."""
    text = run("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(signature)).stdout.decode()
    block = text.split(f"({HEADER_ATTRIBUTE})", 1)[1].split("OCTET STRING:", 1)[1].split("\n\n", 1)[0]
    return bytes.fromhex("".join(re.findall(r"^\s*[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){1,16})", block, re.M))
                         .replace("-", " ").replace(" ", ""))


def test_inspect_lists_frames_without_keys(recorded, run_cli):
    code, out, err = run_cli("inspect", recorded["cap"] / "frames.zcap")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 40
    assert sum(" D apel.jobs" in line for line in lines) == 30
    assert sum(" R apel.jobs" in line and "a first run" in line for line in lines) == 1
    assert sum(" K apel.jobs" in line and "recipients 2" in line and "signature good" in line for line in lines) == 3


def test_decrypt_reads_the_capture_as_a_reader_would(recorded):
    pki = recorded["pki"]

    def decrypt(name):
        c = pki.certs[name]
        return subprocess.run([sys.executable, "-m", "zmqsec.cli", "decrypt", str(recorded["cap"] / "frames.zcap"),
                               "--certificate", str(c.cert_path), "--key", str(c.key_path),
                               "--capath", str(pki.trust_dir), "--publisher-dn", pki.publisher_dn], capture_output=True)

    result = decrypt("dashboard")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"record %d" % i for i in range(30)]
    result = decrypt("outsider")
    assert result.returncode == 0 and result.stdout == b""
    assert b"rejected:no-key=30" in result.stderr and b"rejected:not-a-recipient=3" in result.stderr


def test_a_damaged_capture_is_read_up_to_the_damage(recorded, tmp_path, run_cli):
    damaged = tmp_path / "damaged.zcap"
    data = (recorded["cap"] / "frames.zcap").read_bytes()
    damaged.write_bytes(data[: len(data) // 2] + msgpack.packb("not a record"))
    code, out, _ = run_cli("inspect", damaged)
    assert code == 0 and 0 < len(out.splitlines()) < 40
