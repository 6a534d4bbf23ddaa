"""The ActiveMQ that ``./run test`` starts: STOMP on two connectors, STOMP+SSL with client certificates."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import uuid

import pytest
import stomp

from kit.pki import new_ca
from kit.ports import HOST
from kit.stomp_client import Inbox
from zmqsec.keys.ca import CertificateAuthority, Role

pytestmark = pytest.mark.broker


def _round_trip(conn: stomp.Connection, destination: str) -> str:
    inbox = Inbox()
    conn.set_listener("t", inbox)
    conn.subscribe(destination, id="1", ack="auto")
    body = f"job record {uuid.uuid4()}"
    conn.send(destination, body, headers={"persistent": "true"})
    [(_, received)] = inbox.take(1, timeout=30)
    return received


@pytest.mark.parametrize("port_index", [0, 1])
def test_plain_stomp_connectors_deliver(broker, port_index):
    port = broker["stomp_ports"][port_index]
    conn = stomp.Connection([(HOST, port)], heartbeats=(1000, 1000))
    conn.connect(wait=True)
    try:
        destination = f"/queue/zmqsec.test.{uuid.uuid4().hex}"
        assert _round_trip(conn, destination).startswith("job record ")
    finally:
        conn.disconnect()


def test_stomp_ssl_accepts_a_client_certificate_from_the_broker_ca(broker, tmp_path):
    ca = CertificateAuthority.open(broker["ca_dir"])
    client = ca.issue(role=Role.BRIDGE, cn="bridge.test", out_dir=tmp_path)
    conn = stomp.Connection([(HOST, broker["stomp_ssl_port"])])
    conn.set_ssl(for_hosts=[(HOST, broker["stomp_ssl_port"])], key_file=str(client.key_path),
                 cert_file=str(client.cert_path), ca_certs=str(broker["ca_dir"] / "ca.pem"))
    conn.connect(wait=True)
    try:
        assert _round_trip(conn, f"/queue/zmqsec.tls.{uuid.uuid4().hex}").startswith("job record ")
    finally:
        conn.disconnect()


def _tls_connect_frame(broker, cert_path, key_path) -> bytes:
    """TLS handshake plus a raw STOMP CONNECT; the broker's answer (or the TLS error)."""
    ctx = ssl.create_default_context(cafile=str(broker["ca_dir"] / "ca.pem"))
    ctx.load_cert_chain(cert_path, key_path)
    with socket.create_connection((HOST, broker["stomp_ssl_port"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
            return tls.recv(4096)


def test_stomp_ssl_refuses_a_client_certificate_from_another_ca(broker, tmp_path):
    ca = CertificateAuthority.open(broker["ca_dir"])
    member = ca.issue(role=Role.BRIDGE, cn="member", out_dir=tmp_path)
    assert _tls_connect_frame(broker, member.cert_path, member.key_path).startswith(b"CONNECTED")
    stranger_ca = new_ca(tmp_path / "other", "/O=Elsewhere/CN=Other CA")
    intruder = stranger_ca.issue(role=Role.BRIDGE, cn="intruder", out_dir=tmp_path)
    # TLS 1.3 reports the refused client certificate on the first read, not in the handshake.
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_UNKNOWN"):
        _tls_connect_frame(broker, intruder.cert_path, intruder.key_path)


def test_a_stomp_ssl_port_without_a_tls_ca_is_refused_with_its_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zmqsec.cli", "broker", "start", "--dir", str(tmp_path / "amq"),
                           "--stomp-ssl-port", "61699"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--stomp-ssl-port needs --tls-ca" in proc.stderr
    assert not (tmp_path / "amq").exists()  # nothing was started
