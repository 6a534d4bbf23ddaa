"""The bridge section, both directions.  stomp-out: EMI S/MIME messages into ActiveMQ with receipts, the
bridge's path against one ``openssl smime`` process per sign and per encrypt (APEL SSM's sender), and the
broker's own ceiling (the same sends of ready-made bodies).  stomp-in: the same messages taken from the broker,
verified (and decrypted), stored in an incoming queue and acknowledged, against one ``openssl smime`` process
per decrypt and per verify (APEL SSM's receiver)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from zmqsec.keys.pemfiles import Credential, load_certificate
from zmqsec.machines.receiver import Delivered

from zmqsec.bridges.outbox import Outbox
from zmqsec.bridges.signer import BodyMaker
from zmqsec.bridges.workers import MIN_CHUNK, default_workers
from zmqsec.bridges.stomp_out import OutSettings, StompOutBridge
from zmqsec.bridges.stomplink import BrokerSettings, StompLink

from .config import STREAM, BenchError
from .pki import Pki
from .stats import median

log = logging.getLogger("zmqsec.bench")


def apel_body(size: int) -> bytes:
    """An APEL individual-job message of about ``size`` bytes (ASCII, short lines, as SSM sends)."""
    head = b"APEL-individual-job-message: v0.3\n"
    record = (b"Site: BENCH-SITE\nSubmitHost: ce.bench.example.org\nLocalJobId: %07d\nLocalUserId: user%03d\n"
              b"FQAN: /bench/Role=NULL/Capability=NULL\nWallDuration: 3600\nCpuDuration: 3500\n"
              b"Processors: 1\nStartTime: 1700000000\nEndTime: 1700003600\n%%%%\n")
    out, i = bytearray(head), 0
    while len(out) < size:
        out += record % (i, i % 1000)
        i += 1
    return bytes(out[:size - 1]) + b"\n"


def _openssl(args: list[str], text: str) -> str:
    """One openssl process, as APEL SSM's crypto.py runs it (text in, text out)."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(text)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])} failed: {err.strip()[:200]}")
    return out


class BridgeBench:
    """EMI messages into ActiveMQ with receipts: the bridge's path against APEL SSM's."""

    def __init__(self, pki: Pki, host: str, port: int, workdir: Path) -> None:
        self.pki, self.workdir = pki, workdir
        self.settings = BrokerSettings(hosts=((host, port),))
        self.destination = f"/queue/zmqsec.bench.{uuid.uuid4().hex[:12]}"
        self.credential = Credential.load(pki.bridge_cert, pki.bridge_key)
        self.server = load_certificate(pki.server_cert)
        self.stream_id = os.urandom(16)
        self.seq = 0
        self.sent = 0  # receipted and not yet drained
        self._makers: dict[bool, BodyMaker] = {}  # the signing workers, by mode (encrypting or not)

    def close(self) -> None:
        """Stop the signing workers."""
        for maker in self._makers.values():
            maker.close()

    def drain(self, timeout: float = 300.0) -> int:
        """Consume what was sent so the broker does not grow over the run (not timed)."""
        link = StompLink(self.settings)
        link.subscribe(self.destination, ack="auto")
        link.connect()
        got, deadline = 0, time.monotonic() + timeout
        try:
            while got < self.sent and time.monotonic() < deadline:
                if link.next_message(1.0) is not None:
                    got += 1
        finally:
            link.close()
        if got < self.sent:
            raise BenchError(f"the broker held {got} of {self.sent} receipted messages")
        self.sent = 0
        return got

    def _bridge(self, encrypt: bool, outbox, workers: int = 1):
        link = StompLink(self.settings)
        settings = OutSettings(destination=self.destination, server_certs=(self.server,) if encrypt else (),
                               workers=workers)
        maker = None
        if workers > 1:  # started once per mode, as a running bridge starts its workers once
            maker = self._makers.get(encrypt)
            if maker is None:
                maker = self._makers[encrypt] = BodyMaker(self.credential, server_certs=settings.server_certs,
                                                          workers=workers)
                maker.submit([b"warm"] * workers * MIN_CHUNK)()
        return link, StompOutBridge(link, outbox, self.credential, settings, maker=maker)

    def _delivered(self, body: bytes) -> Delivered:
        self.seq += 1
        return Delivered(STREAM.encode(), self.stream_id, 1, self.seq, body, self.pki.publisher_dn)

    def zmqsec(self, body: bytes, encrypt: bool, count: int, tag: str) -> float:
        """The bridge as ``zmqsec bridge stomp-out`` runs it: bodies signed (+ encrypted) on one worker
        process per core while the previous batch is sent, the outbox committed once per batch taken (here a
        window's worth, the least a busy bridge takes at once), a window of sends with receipts, removal on
        receipt.  Returns messages/s."""
        outbox = Outbox(self.workdir / f"outbox-{tag}")
        link, bridge = self._bridge(encrypt, outbox, default_workers())
        try:
            link.connect()
            t0 = time.perf_counter()
            window = bridge.settings.window
            for start in range(0, count, window):
                bridge.step([self._delivered(body) for _ in range(min(window, count - start))], time.monotonic())
            stalled = time.monotonic() + 60
            while bridge.counters["sent"] < count:
                if bridge.send_pending(time.monotonic()):
                    stalled = time.monotonic() + 60
                elif time.monotonic() > stalled:
                    raise BenchError(f"bridge: {bridge.counters['sent']} of {count} receipted after 60s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
            outbox.close()
        self.sent += count
        return count / seconds

    def zmqsec_without_outbox(self, body: bytes, encrypt: bool, count: int) -> float:
        """The same signing and the same windowed sends with receipts, without the durable outbox:
        the work APEL SSM's sender does, done the bridge's way.  Returns messages/s."""
        link, bridge = self._bridge(encrypt, None)
        window = bridge.settings.window
        try:
            link.connect()
            t0 = time.perf_counter()
            for start in range(0, count, window):
                items = []
                for _ in range(min(window, count - start)):
                    message = self._delivered(body)
                    items.append((bridge.body_for(message.payload),
                                  {"empa-id": message.message_id, "persistent": "true", "content-type": "text/plain"}))
                receipt = items[0][1]["empa-id"]
                link.send_transaction(self.destination, items, receipt)
                if not link.wait_receipts({receipt}, 30.0):
                    raise BenchError("bridge without outbox: no receipt after 30s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        self.sent += count
        return count / seconds

    def openssl_cli(self, body: bytes, encrypt: bool, count: int) -> tuple[float, list[float]]:
        """APEL SSM's sender: per message ``openssl smime -sign`` (then ``-encrypt -aes256``) as
        processes, one STOMP send, wait for its receipt.  Returns messages/s and the crypto times.

        SSM polls for the receipt with 10 ms sleeps; this waits on an event, which flatters it."""
        link = StompLink(self.settings)
        text = body.decode("ascii")
        sign = ["openssl", "smime", "-sign", "-inkey", str(self.pki.bridge_key), "-signer", str(self.pki.bridge_cert), "-text"]
        enc = ["openssl", "smime", "-encrypt", "-aes256", str(self.pki.server_cert)]
        crypto = []
        try:
            link.connect()
            t0 = time.perf_counter()
            for _ in range(count):
                msgid = self._delivered(body).message_id
                c0 = time.perf_counter()
                message = _openssl(sign, text)
                if encrypt:
                    message = _openssl(enc, message)
                crypto.append(time.perf_counter() - c0)
                link.send(self.destination, message.encode(), {"empa-id": msgid, "persistent": "true"}, msgid)
                if not link.wait_receipts({msgid}, 30.0):
                    raise BenchError(f"no receipt for {msgid} within 30s")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        self.sent += count
        return count / seconds, crypto

    def broker_only(self, body: bytes, encrypt: bool, count: int) -> float:
        """The broker's ceiling: ready-made bodies, the same windows of persistent sends (one transaction each,
        its commit receipted), no signing and no outbox.  Returns messages/s."""
        bodies = self.bodies(body, encrypt, count)
        t0 = time.perf_counter()
        self._fill(self.destination, bodies)
        seconds = time.perf_counter() - t0
        self.sent += count
        return count / seconds

    def bodies(self, body: bytes, encrypt: bool, count: int) -> list[bytes]:
        """``count`` S/MIME bodies of ``body`` (made once, not timed)."""
        _, bridge = self._bridge(encrypt, None)
        made = bridge.body_for(body)
        return [made] * count

    def _fill(self, destination: str, bodies: list[bytes]) -> None:
        """Send ``bodies`` persistently as the bridge does: a window at a time, one transaction with a receipt."""
        link = StompLink(self.settings)
        try:
            link.connect()
            for start in range(0, len(bodies), 100):
                items = [(made, {"empa-id": f"{self.stream_id.hex()}/{destination}/{i}", "persistent": "true",
                                 "content-type": "text/plain"}) for i, made in enumerate(bodies[start:start + 100], start)]
                receipt = items[0][1]["empa-id"]
                link.send_transaction(destination, items, receipt)
                if not link.wait_receipts({receipt}, 30.0):
                    raise BenchError(f"no receipt after 30s while filling {destination}")
        finally:
            link.close()

    def crypto_ms(self, body: bytes, encrypt: bool, count: int = 20) -> float:
        """The bridge's sign (+ encrypt) alone, per message."""
        _, bridge = self._bridge(encrypt, None)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            bridge.body_for(body)
            times.append(time.perf_counter() - t0)
        return median(times) * 1e3



def pkcs7_builder_ms(credential: Credential, server: x509.Certificate, body: bytes, encrypt: bool,
                     count: int = 20) -> float:
    """cryptography's own S/MIME builders on the bridge's work, per message: ``PKCS7SignatureBuilder`` (detached,
    sha-256, as the bridge signs) and then, to encrypt, ``PKCS7EnvelopeBuilder`` (AES-256-CBC to ``server``).
    The path the bridge would take were it the faster one."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        message = (pkcs7.PKCS7SignatureBuilder().set_data(body)
                   .add_signer(credential.certificate, credential.key, hashes.SHA256())
                   .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature]))
        if encrypt:
            message = (pkcs7.PKCS7EnvelopeBuilder().set_data(message).add_recipient(server)
                       .set_content_encryption_algorithm(algorithms.AES256)
                       .encrypt(serialization.Encoding.SMIME, []))
        times.append(time.perf_counter() - t0)
    return median(times) * 1e3

