"""The bridge section: EMI S/MIME messages into ActiveMQ with receipts, the bridge's in-process
path against one ``openssl smime`` process per sign and per encrypt (APEL SSM's way)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

from zmqsec.keys.pemfiles import Credential, load_certificate
from zmqsec.machines.receiver import Delivered

from zmqsec.bridges.outbox import Outbox
from zmqsec.bridges.stomp_out import OutSettings, StompOutBridge
from zmqsec.bridges.stomplink import BrokerSettings, StompLink

from .config import STREAM, BenchError, Profile
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

    def _bridge(self, encrypt: bool, outbox):
        link = StompLink(self.settings)
        settings = OutSettings(destination=self.destination, server_certs=(self.server,) if encrypt else ())
        return link, StompOutBridge(link, outbox, self.credential, settings)

    def _delivered(self, body: bytes) -> Delivered:
        self.seq += 1
        return Delivered(STREAM.encode(), self.stream_id, 1, self.seq, body, self.pki.publisher_dn)

    def zmqsec(self, body: bytes, encrypt: bool, count: int, tag: str) -> float:
        """The bridge as ``zmqsec bridge stomp-out`` runs it: sign (+ encrypt) in-process, the outbox
        synced once per batch taken (here a window's worth, the least a busy bridge takes at once), a window
        of sends with receipts, removal on receipt.  Returns messages/s."""
        outbox = Outbox(self.workdir / f"outbox-{tag}")
        link, bridge = self._bridge(encrypt, outbox)
        try:
            link.connect()
            t0 = time.perf_counter()
            for i in range(count):
                bridge.take(self._delivered(body), durable=False)
                if (i + 1) % bridge.settings.window == 0 or i + 1 == count:
                    outbox.sync()
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
                wanted = set()
                for _ in range(min(window, count - start)):
                    message = self._delivered(body)
                    receipt = message.message_id
                    link.send(self.destination, bridge.body_for(message.payload),
                              {"empa-id": receipt, "persistent": "true", "content-type": "text/plain"}, receipt)
                    wanted.add(receipt)
                if link.wait_receipts(wanted, 30.0) != wanted:
                    raise BenchError("bridge without outbox: receipts missing after 30s")
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

    def crypto_ms(self, body: bytes, encrypt: bool, count: int = 20) -> float:
        """The bridge's sign (+ encrypt) alone, per message."""
        _, bridge = self._bridge(encrypt, None)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            bridge.body_for(body)
            times.append(time.perf_counter() - t0)
        return median(times) * 1e3


def run_bridge(profile: Profile, pki: Pki, host: str, port: int, workdir: Path) -> list[dict]:
    """Each body size of the profile, signed and signed+encrypted: one row each, the bridge's
    rate (with and without its outbox) against the openssl CLI's."""
    bench = BridgeBench(pki, host, port, workdir)
    # The broker's JVM compiles its hot paths in its first seconds: warm it with untimed traffic.
    for size in profile.bridge_bodies:
        bench.zmqsec_without_outbox(apel_body(size), False, 100)
    bench.drain()
    results = []
    for size in profile.bridge_bodies:
        body = apel_body(size)
        for mode, encrypt in (("sign", False), ("sign+encrypt", True)):
            log.info("bridge: %d-byte bodies, %s: %d (zmqsec) and %d (openssl CLI) messages x %d repetitions",
                     size, mode, profile.bridge_messages, profile.bridge_openssl_messages, profile.bridge_reps)
            bench.zmqsec(body, encrypt, min(20, profile.bridge_messages), f"warm-{size}-{mode}")  # connections, caches
            bench.openssl_cli(body, encrypt, 2)
            ours, bare, theirs, cli_crypto = [], [], [], []
            for rep in range(profile.bridge_reps):
                ours.append(bench.zmqsec(body, encrypt, profile.bridge_messages, f"{size}-{mode}-{rep}"))
                bare.append(bench.zmqsec_without_outbox(body, encrypt, profile.bridge_messages))
                rate, crypto = bench.openssl_cli(body, encrypt, profile.bridge_openssl_messages)
                theirs.append(rate)
                cli_crypto += crypto
            bench.drain()
            z, b, o = median(ours), median(bare), median(theirs)
            results.append({
                "body_bytes": size, "mode": mode, "zmqsec_msgs_per_s": z, "openssl_cli_msgs_per_s": o, "ratio": z / o,
                "zmqsec_without_outbox_msgs_per_s": b, "ratio_without_outbox": b / o,
                "zmqsec_crypto_ms": bench.crypto_ms(body, encrypt), "openssl_cli_crypto_ms": median(cli_crypto) * 1e3,
                "zmqsec_messages": profile.bridge_messages, "openssl_cli_messages": profile.bridge_openssl_messages,
                "repetitions": profile.bridge_reps,
                "zmqsec_msgs_per_s_samples": ours, "zmqsec_without_outbox_msgs_per_s_samples": bare,
                "openssl_cli_msgs_per_s_samples": theirs,
            })
            log.info("bridge %d B %s: zmqsec %.0f msg/s (%.0f without the outbox), openssl CLI %.1f msg/s (ratio %.1f)",
                     size, mode, z, b, o, z / o)
    return results
