"""Optional CurveZMQ on tcp links, keys from configuration, between real processes: who may
connect, and what an on-path observer of the tcp bytes sees with and without it."""

from __future__ import annotations

import socket
import threading

import pytest

from kit import daemons
from zmqsec.drivers import curve


class Tap:
    """A tcp forwarder on loopback that keeps every byte it passes (an on-path observer)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the publisher is not listening yet: the reader will reconnect
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("with_curve", [True, False], ids=["curve", "plain"])
def test_what_an_observer_sees_on_the_wire(site, with_curve):
    d = site.dir
    endpoint = daemons.endpoint("tcp", d)
    extra_pub, extra_sub = {}, {}
    if with_curve:
        curve.generate(d / "curve", "publisher")
        extra_pub = {"curve_secret_key": d / "curve" / "publisher.key_secret"}
        extra_sub = {"curve_server_key": d / "curve" / "publisher.key"}
    tap = Tap(_port(endpoint))
    publisher = daemons.publisher(site, endpoint, **extra_pub)
    reader = daemons.subscriber(site, "portal", f"tcp://127.0.0.1:{tap.port}", **extra_sub)
    logs = daemons.logs(site, "publisher", "portal")
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="the key", logs=logs)
        daemons.feed(site, 10)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 10, what="delivery", logs=logs)
    finally:
        daemons.stop(publisher, reader)
        tap.close()
    # The payloads are end-to-end encrypted either way; without CURVE the stream name, frame kinds and the
    # recipients' issuer names travel in clear, with CURVE nothing of them does.
    assert b"job 1" not in tap.seen
    assert (b"apel.jobs" in tap.seen, b"zmqsec test" in tap.seen) == (not with_curve, not with_curve)


def test_only_listed_clients_may_connect_and_relays_carry_curve_both_ways(site):
    d = site.dir
    keys = d / "curve"
    curve.generate(keys, "publisher")
    curve.generate(keys, "relay")
    curve.generate(keys / "allowed", "relay-client")  # the relay's client key, the only one the publisher admits
    curve.generate(keys, "stranger")
    upstream, downstream = daemons.endpoint("tcp", d), daemons.endpoint("tcp", d)
    publisher = daemons.publisher(site, upstream, curve_secret_key=keys / "publisher.key_secret",
                                  curve_clients=keys / "allowed")
    relay = daemons.relay(site, "relay", upstream, downstream, curve_in_server_key=keys / "publisher.key",
                          curve_in_secret_key=keys / "allowed" / "relay-client.key_secret",
                          curve_out_secret_key=keys / "relay.key_secret")
    behind_relay = daemons.subscriber(site, "portal", downstream, curve_server_key=keys / "relay.key")
    stranger = daemons.subscriber(site, "dashboard", upstream, curve_server_key=keys / "publisher.key",
                                  curve_secret_key=keys / "stranger.key_secret")
    plain = daemons.subscriber(site, "central", upstream)
    logs = daemons.logs(site, "publisher", "relay", "portal")
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="the key through the relay", logs=logs)
        daemons.feed(site, 10)
        daemons.wait(lambda: len(daemons.incoming(site, "portal")) == 10, what="delivery", logs=logs)
        daemons.wait(lambda: daemons.status(site, "dashboard").get("updated") and daemons.status(site, "central").get("updated"),
                     what="the refused readers' status")
    finally:
        daemons.stop(publisher, relay, behind_relay, stranger, plain)
    # Readers the publisher would wrap keys for, but that are not admitted on the link, get nothing at all.
    for name in ("dashboard", "central"):
        status = daemons.status(site, name)
        assert status.get("epoch") == 0 and status.get("received") == 0, (name, status)
        assert daemons.incoming(site, name) == []


def test_curve_key_files_are_checked(tmp_path):
    public, secret = curve.generate(tmp_path, "x")
    assert secret.stat().st_mode & 0o777 == 0o600
    secret.chmod(0o640)
    with pytest.raises(Exception, match="group/others"):
        curve.server(secret)
    secret.chmod(0o600)
    with pytest.raises(Exception, match="no secret key"):
        curve.server(public)
    (tmp_path / "junk.key").write_text("metadata\ncurve\n    public-key = \"short\"\n")
    with pytest.raises(Exception, match="40 Z85"):
        curve.load_public(tmp_path / "junk.key")


def test_the_stomp_bridge_reads_a_curve_stream(site):
    """stomp-out is a reader too: with the publisher's public key it reads a CURVE-only stream (into its
    durable outbox here, the broker being down), without it it reads nothing."""
    d = site.dir
    curve.generate(d / "curve", "publisher")
    endpoint = daemons.endpoint("tcp", d)
    publisher = daemons.publisher(site, endpoint, curve_secret_key=d / "curve" / "publisher.key_secret")

    def bridge(name, **extra):
        # The broker is down (nothing listens on port 1): what the bridge reads stays in its outbox.
        return daemons.bridge_out(site, name, endpoint, reader="portal", destination="/queue/zmqsec.curve",
                                  hosts="127.0.0.1:1", **extra)

    with_key = bridge("with-key", curve_server_key=d / "curve" / "publisher.key")
    without = bridge("without-key")
    logs = daemons.logs(site, "publisher", "with-key")
    try:
        daemons.wait(lambda: daemons.status(site, "with-key").get("epoch") == 1, what="the bridge to hold the key", logs=logs)
        daemons.feed(site, 5)
        daemons.wait(lambda: daemons.status(site, "with-key").get("outbox") == 5, what="five messages in the outbox", logs=logs)
        daemons.wait(lambda: daemons.status(site, "without-key").get("role"), what="the other bridge's status")
    finally:
        daemons.stop(publisher, with_key, without)
    assert daemons.status(site, "without-key")["epoch"] == 0 and daemons.status(site, "without-key")["outbox"] == 0
