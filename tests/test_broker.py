"""The ActiveMQ that ``./run test`` starts: STOMP on two connectors, STOMP+SSL with client certificates."""

from __future__ import annotations

import ssl
import uuid

import pytest
import stomp
from stomp.exception import ConnectFailedException

from keys.ca import CertificateAuthority, Role
from keys.dn import parse_slash_dn

pytestmark = pytest.mark.broker

HOST = "127.0.0.1"


def _round_trip(conn: stomp.Connection, destination: str) -> str:
    listener = stomp.listener.TestListener(print_to_log=False)
    conn.set_listener("t", listener)
    conn.subscribe(destination, id="1", ack="auto")
    body = f"job record {uuid.uuid4()}"
    conn.send(destination, body, headers={"persistent": "true", "receipt": "r1"})
    listener.wait_for_message()
    return listener.get_latest_message()[1]


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


def test_stomp_ssl_refuses_a_client_certificate_from_another_ca(broker, tmp_path):
    stranger_ca = CertificateAuthority.init(tmp_path / "other", subject=parse_slash_dn("/O=Elsewhere/CN=Other CA"), rsa_bits=2048)
    client = stranger_ca.issue(role=Role.BRIDGE, cn="intruder", out_dir=tmp_path)
    conn = stomp.Connection([(HOST, broker["stomp_ssl_port"])], reconnect_attempts_max=1)
    conn.set_ssl(for_hosts=[(HOST, broker["stomp_ssl_port"])], key_file=str(client.key_path),
                 cert_file=str(client.cert_path), ca_certs=str(broker["ca_dir"] / "ca.pem"))
    with pytest.raises((ConnectFailedException, ssl.SSLError, OSError)):
        conn.connect(wait=True)
        # TLS 1.3 reports the refused client certificate on first read, not in the handshake.
        _round_trip(conn, "/queue/zmqsec.never")
