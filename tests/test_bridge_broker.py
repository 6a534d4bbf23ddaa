"""The STOMP bridge against the real ActiveMQ: delivery, EMI bodies SSM accepts, durability
through broker and bridge crashes, TLS, failover, and the inbound direction with its refusals."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
import stomp

from bridges.activemq import BrokerConfig, LocalBroker
from keys.ca import CertificateAuthority, Role
from keys.dn import parse_slash_dn, slash_dn
from keys.registry import ReaderRegistry
from zmqsec import smime
from zmqsec.spool import IncomingSpool, OutgoingSpool
from keys.pemfiles import Credential
import ssmpeer
from opensslpeer import run
import daemons

pytestmark = pytest.mark.broker
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path, broker):
    """Stream PKI from the broker's CA, so the bridge certificate also works as a TLS client certificate."""
    ca = CertificateAuthority.open(broker["ca_dir"])
    certs = {"publisher": ca.issue(role=Role.PUBLISHER, cn=f"publisher-{tmp_path.name}", out_dir=tmp_path / "certs"),
             "bridge": ca.issue(role=Role.BRIDGE, cn=f"bridge-{tmp_path.name}", out_dir=tmp_path / "certs"),
             "server": ca.issue(role=Role.SERVER, cn=f"apel-{tmp_path.name}", out_dir=tmp_path / "certs")}
    registry = ReaderRegistry(tmp_path / "readers.d")
    registry.add(certs["bridge"].certificate)
    return {"dir": tmp_path, "ca": ca, "certs": certs, "queue": f"/queue/zmqsec.test.{uuid.uuid4().hex[:12]}"}


def _publisher(site, endpoint):
    d, c = site["dir"], site["certs"]["publisher"]
    return daemons.cli("publish", "--stream", "apel", "--endpoint", endpoint, "--certificate", c.cert_path, "--key", c.key_path,
                "--capath", site["ca"].trust_dir, "--registry", d / "readers.d", "--outgoing", d / "outgoing",
                "--poll-interval", "0.05", "--status-file", d / "publisher.json", "--status-interval", "0.2",
                log=d / "publisher.log")


def _bridge_out(site, endpoint, hosts, *extra):
    d, c = site["dir"], site["certs"]["bridge"]
    args = ["--log-level", "INFO", "bridge", "stomp-out", "--stream", "apel", "--endpoint", endpoint,
            "--publisher-dn", slash_dn(site["certs"]["publisher"].certificate.subject),
            "--certificate", c.cert_path, "--key", c.key_path, "--capath", site["ca"].trust_dir,
            "--destination", site["queue"], "--outbox", d / "outbox", "--status-file", d / "bridge.json",
            "--status-interval", "0.2", "--heartbeat", "2000", *extra]
    for h in hosts:
        args += ["--hosts", h]
    return daemons.cli(*args, log=d / "bridge.log")


def _drain(port: int, destination: str, expect: int, timeout: float = 30.0) -> list:
    """Consume a queue until ``expect`` messages or ``timeout``; return (headers, body) pairs."""
    got = []

    class L(stomp.ConnectionListener):
        def on_message(self, frame):
            got.append((dict(frame.headers), frame.body))

    conn = stomp.Connection([(HOST, port)], auto_decode=False)
    conn.set_listener("drain", L())
    conn.connect(wait=True)
    conn.subscribe(destination, id="drain", ack="auto")
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a duplicate arriving right after the last expected message is still counted
    conn.disconnect()
    return got


def _logs(site):
    return [site["dir"] / n for n in ("publisher.log", "bridge.log", "bridge-in.log")]


@pytest.mark.parametrize("encrypt", [False, True], ids=["sign", "sign+encrypt"])
def test_stream_to_broker_bodies_are_emi_and_ssm_accepts_them(site, broker, encrypt):
    d = site["dir"]
    endpoint = f"ipc://{d}/stream.ipc"
    extra = ["--server-cert", site["certs"]["server"].cert_path] if encrypt else []
    pub = _publisher(site, endpoint)
    bridge = _bridge_out(site, endpoint, [f"{HOST}:{broker['stomp_ports'][0]}"], *extra)
    try:
        daemons.wait(lambda: daemons.status(site, "bridge").get("broker") and daemons.status(site, "bridge").get("epoch") == 1,
                     what="bridge connected and holding the stream key", logs=_logs(site))
        daemons.feed(site, 30, b"APEL-individual-job-message: v0.3\nLocalJobId: %d\nWallDuration: 3600\n%%%%\n")
        daemons.wait(lambda: daemons.status(site, "bridge").get("sent", 0) == 30, what="30 receipts", logs=_logs(site))
        messages = _drain(broker["stomp_ports"][0], site["queue"], 30)
    finally:
        daemons.stop(pub, bridge)
    assert len(messages) == 30
    empaids = [h["empa-id"] for h, _ in messages]
    assert len(set(empaids)) == 30 and all(h.get("persistent") == "true" for h, _ in messages)
    dn = slash_dn(site["certs"]["bridge"].certificate.subject)
    server = site["certs"]["server"]
    bodies = set()
    for headers, body in messages:
        assert body.isascii()
        assert (b"smime-type=enveloped-data" in body) == encrypt
        text, signer = ssmpeer.receive(body.decode(), server.cert_path, server.key_path, site["ca"].trust_dir, [dn])
        assert signer == dn
        bodies.add(text)
    assert bodies == {f"APEL-individual-job-message: v0.3\nLocalJobId: {i}\nWallDuration: 3600\n%%" for i in range(30)}
    # openssl cms reads them too (decrypting first when encrypted).
    sample = d / "sample.txt"
    sample.write_bytes(messages[0][1])
    if encrypt:
        inner = run("cms", "-decrypt", "-recip", str(server.cert_path), "-inkey", str(server.key_path), "-in", str(sample)).stdout
        sample.write_bytes(inner)
    run("cms", "-verify", "-CApath", str(site["ca"].trust_dir), "-in", str(sample), "-out", "/dev/null")


@pytest.fixture
def own_broker(tmp_path):
    """Brokers this test may stop and kill -9 (the session's broker stays up for the others).

    Call it to configure one (``users`` to require a login); every one is stopped at teardown.
    """
    made = []

    def make(users=()) -> LocalBroker:
        config = BrokerConfig(base=tmp_path / f"amq{len(made)}", openwire_port=_free_port(),
                              stomp_ports=(_free_port(),), users=tuple(users))
        config.base.mkdir()
        made.append(LocalBroker(config))
        return made[-1]

    yield make
    for instance in made:
        instance.stop()


def test_nothing_is_lost_through_broker_outage_and_crashes(site, own_broker):
    own_broker = own_broker()
    d = site["dir"]
    endpoint = f"ipc://{d}/stream.ipc"
    port = own_broker.config.stomp_ports[0]
    spool = OutgoingSpool(d / "outgoing")
    pub = _publisher(site, endpoint)
    bridge = _bridge_out(site, endpoint, [f"{HOST}:{port}"])
    try:
        # 1. Broker down: messages wait in the durable outbox while the stream is still read.
        daemons.wait(lambda: daemons.status(site, "bridge").get("epoch") == 1, what="bridge holding the stream key", logs=_logs(site))
        for i in range(40):
            spool.add(b"outage %d" % i)
        daemons.wait(lambda: daemons.status(site, "bridge").get("outbox") == 40, what="40 in the outbox", logs=_logs(site))
        # 2. kill -9 the bridge with the broker still down; restart it: the outbox is its memory.
        bridge.send_signal(signal.SIGKILL)
        bridge.wait()
        bridge = _bridge_out(site, endpoint, [f"{HOST}:{port}"])
        own_broker.start()
        daemons.wait(lambda: daemons.status(site, "bridge").get("outbox") == 0 and daemons.status(site, "bridge").get("sent") == 40
                     and daemons.status(site, "bridge").get("epoch") == 1,
              what="outbox flushed after the broker came up", logs=_logs(site))
        # 3. kill -9 the broker while the bridge is sending; restart it.
        for i in range(300):
            spool.add(b"crash %d" % i)
        daemons.wait(lambda: daemons.status(site, "bridge").get("sent", 0) >= 60, what="sending under way", logs=_logs(site))
        own_broker.kill()
        time.sleep(0.5)
        own_broker.start()
        daemons.wait(lambda: daemons.status(site, "publisher").get("sent") == 340, what="publisher done", logs=_logs(site))
        daemons.wait(lambda: daemons.status(site, "bridge").get("outbox") == 0 and daemons.status(site, "bridge").get("sent", 0) >= 300,
              timeout=60, what="everything receipted", logs=_logs(site))
        messages = _drain(port, site["queue"], 340)
    finally:
        daemons.stop(pub, bridge)
    ids = [h["empa-id"] for h, _ in messages]
    assert len(set(ids)) == 340, f"{len(set(ids))} distinct of {len(ids)} received"
    # Duplicates, if any, are byte-identical resends under the same empa-id.
    by_id = {}
    for headers, body in messages:
        assert by_id.setdefault(headers["empa-id"], body) == body
    contents = {smime.open_message(body).content for _, body in messages}
    assert contents == {b"outage %d" % i for i in range(40)} | {b"crash %d" % i for i in range(300)}


def test_tls_with_client_certificate_and_failover(site, broker):
    d = site["dir"]
    endpoint = f"ipc://{d}/stream.ipc"
    dead = f"{HOST}:{_free_port()}"
    pub = _publisher(site, endpoint)
    bridge = _bridge_out(site, endpoint, [dead, f"localhost:{broker['stomp_ssl_port']}"], "--use-ssl", "yes",
                         "--ca-certs", Path(broker["ca_dir"]) / "ca.pem")
    try:
        daemons.wait(lambda: daemons.status(site, "bridge").get("broker") == f"localhost:{broker['stomp_ssl_port']}"
                     and daemons.status(site, "bridge").get("epoch") == 1,
              what="TLS connection after failing over", logs=_logs(site))
        daemons.feed(site, 10, b"tls %d")
        daemons.wait(lambda: daemons.status(site, "bridge").get("sent", 0) == 10, what="receipts over TLS", logs=_logs(site))
    finally:
        daemons.stop(pub, bridge)
    assert "unavailable" in (d / "bridge.log").read_text()  # it did try the dead broker first
    assert len(_drain(broker["stomp_ports"][0], site["queue"], 10)) == 10


def test_login_and_passcode(site, own_broker):
    """Against a broker that requires authentication: a wrong passcode is refused, the right one delivers."""
    instance = own_broker(users=[("accounting", "s3cret")])
    instance.start()
    d = site["dir"]
    endpoint = f"ipc://{d}/stream.ipc"
    hosts = [f"{HOST}:{instance.config.stomp_ports[0]}"]
    pub = _publisher(site, endpoint)
    bridge = _bridge_out(site, endpoint, hosts, "--login", "accounting", "--passcode", "wrong")
    try:
        daemons.wait(lambda: daemons.status(site, "bridge").get("connect-failed", 0) >= 1, what="refusal", logs=_logs(site))
        assert daemons.status(site, "bridge").get("broker") is None
        daemons.stop(bridge)
        bridge = _bridge_out(site, endpoint, hosts, "--login", "accounting", "--passcode", "s3cret")
        daemons.wait(lambda: daemons.status(site, "bridge").get("broker") and daemons.status(site, "bridge").get("epoch") == 1,
                     what="authenticated connection", logs=_logs(site))
        daemons.feed(site, 5, b"authenticated %d")
        daemons.wait(lambda: daemons.status(site, "bridge").get("sent", 0) == 5, what="receipts", logs=_logs(site))
    finally:
        daemons.stop(pub, bridge)


def _send_raw(port: int, destination: str, bodies: list[tuple[str, bytes]]) -> None:
    conn = stomp.Connection([(HOST, port)], auto_decode=False)
    conn.connect(wait=True)
    for empaid, body in bodies:
        conn.send(destination, body, headers={"empa-id": empaid, "persistent": "true"})
    conn.disconnect()


def test_broker_to_spool_accepts_emi_senders_and_rejects_the_rest(site, broker, tmp_path):
    d = site["dir"]
    c = site["certs"]
    sender = Credential.load(c["bridge"].cert_path, c["bridge"].key_path)
    record = b"APEL-summary-job-message: v0.2\nSite: RAL-LCG2\nNumberOfJobs: 42\n%%\n"
    path = d / "record.txt"
    path.write_bytes(record)
    ssm_signed = run("smime", "-sign", "-text", "-signer", str(c["bridge"].cert_path), "-inkey", str(c["bridge"].key_path),
                     "-in", str(path)).stdout
    ssm_encrypted = run("smime", "-encrypt", "-aes256", str(c["server"].cert_path), input=ssm_signed).stdout
    cms_signed = run("cms", "-sign", "-signer", str(c["bridge"].cert_path), "-inkey", str(c["bridge"].key_path),
                     "-in", str(path), "-md", "sha384").stdout
    ours = smime.sign(record, sender)
    ours_encrypted = smime.encrypt(ours, [c["server"].certificate])
    # Refusals: each for its own reason.
    stranger_ca = CertificateAuthority.init(tmp_path / "stranger", subject=parse_slash_dn("/O=Elsewhere/CN=Stranger CA"), rsa_bits=2048)
    stranger = stranger_ca.issue(role=Role.BRIDGE, cn="stranger", out_dir=tmp_path)
    other_site = site["ca"].issue(role=Role.BRIDGE, cn=f"unlisted-{tmp_path.name}", out_dir=tmp_path)
    revoked = site["ca"].issue(role=Role.BRIDGE, cn=f"revoked-{tmp_path.name}", out_dir=tmp_path)
    revoked_signed = smime.sign(record, Credential.load(revoked.cert_path, revoked.key_path))
    dn_list = d / "valid_dns"
    dn_list.write_text("\n".join(slash_dn(x.subject) for x in (c["bridge"].certificate, stranger.certificate,
                                                               revoked.certificate)) + "\n")
    good = [("ssm-signed", ssm_signed), ("ssm-encrypted", ssm_encrypted), ("cms-signed", cms_signed),
            ("ours", ours), ("ours-encrypted", ours_encrypted)]
    bad = [("unsigned", b"Content-Type: text/plain\r\n\r\n" + record, "unsigned"),
           ("unlisted", smime.sign(record, Credential.load(other_site.cert_path, other_site.key_path)), "dn-not-allowed"),
           ("unknown-ca", smime.sign(record, Credential.load(stranger.cert_path, stranger.key_path)), "unknown-issuer"),
           ("revoked", revoked_signed, "revoked"),
           ("tampered", ours.replace(b"NumberOfJobs: 42", b"NumberOfJobs: 99"), "bad-signature"),
           ("garbage", b"\x00\xff not a message at all", "malformed-smime"),
           ("oversized", smime.sign(b"x" * 300_000, sender), "oversized")]
    ca = CertificateAuthority.open(broker["ca_dir"])
    ca.revoke(revoked.certificate)
    _send_raw(broker["stomp_ports"][0], site["queue"], good + [(n, b) for n, b, _ in bad])
    server = c["server"]
    proc = daemons.cli("--log-level", "INFO", "bridge", "stomp-in", "--hosts", f"{HOST}:{broker['stomp_ports'][0]}",
                "--certificate", server.cert_path, "--key", server.key_path, "--capath", site["ca"].trust_dir,
                "--destination", site["queue"], "--incoming", d / "incoming", "--reject", d / "reject",
                "--dn-list", dn_list, "--max-bytes", "200000", "--status-file", d / "bridge-in.json",
                "--status-interval", "0.2", log=d / "bridge-in.log")
    try:
        daemons.wait(lambda: daemons.status(site, "bridge-in").get("accepted", 0) + sum(
            v for k, v in daemons.status(site, "bridge-in").items() if k.startswith("rejected:")) == 12,
            what="all 12 handled", logs=_logs(site))
    finally:
        daemons.stop(proc)
    incoming = IncomingSpool(d / "incoming", d / "reject")
    accepted = {m["empaid"]: m for m in incoming.messages()}
    assert set(accepted) == {n for n, _ in good}
    assert all(m["body"].rstrip("\n") == record.decode().rstrip("\n") for m in accepted.values())
    assert {m["signer"] for m in accepted.values()} == {slash_dn(c["bridge"].certificate.subject)}
    rejects = {}
    for name in incoming.rejects:
        if incoming.rejects.lock(name):
            element = incoming.rejects.get(name)
            rejects[element["empaid"]] = element["error"]
    assert {k: v.split(":", 1)[0] for k, v in rejects.items()} == {n: reason for n, _, reason in bad}
    # Everything was acknowledged: nothing is left on the queue for redelivery.
    assert _drain(broker["stomp_ports"][0], site["queue"], 1, timeout=2.0) == []
