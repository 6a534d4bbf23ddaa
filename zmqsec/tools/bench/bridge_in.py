"""The bridge section, inbound: EMI messages taken from ActiveMQ as ``zmqsec bridge stomp-in`` takes them,
against APEL SSM's receiver (one ``openssl smime`` process per decrypt and per verify)."""

from __future__ import annotations

import time

from zmqsec.bridges.opener import Opener
from zmqsec.bridges.stomp_in import InSettings, StompInBridge
from zmqsec.bridges.workers import default_workers
from zmqsec.bridges.stomplink import StompLink
from zmqsec.drivers.spool import IncomingSpool
from zmqsec.keys.dn import DnAllowList, slash_dn
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import TrustStore

from .bridge import BridgeBench, _openssl
from .config import BenchError


class InboundBench:
    """stomp-in and SSM's receiver on the same messages, which ``out`` (the outbound bench) makes and sends."""

    def __init__(self, out: BridgeBench) -> None:
        self.out = out
        self.server = Credential.load(out.pki.server_cert, out.pki.server_key)
        self._opener: Opener | None = None  # the opening workers, started once as a running bridge starts them

    def opener(self) -> Opener:
        """One opening worker per core, started (and warmed) on first use."""
        if self._opener is None:
            self._opener = Opener(self.server, max_bytes=InSettings.max_bytes, workers=default_workers())
            self._opener.open(self.out.bodies(b"warm\n", True, 4 * default_workers()))()
        return self._opener

    def close(self) -> None:
        """Stop the opening workers."""
        if self._opener is not None:
            self._opener.close()

    def stomp_in(self, body: bytes, encrypt: bool, count: int, tag: str) -> float:
        """stomp-in as ``zmqsec bridge stomp-in`` runs it: batches taken from the broker, each message
        decrypted (when encrypted) and verified on one worker process per core, validated (CRL, DN list),
        stored in a dirq incoming queue,
        the batch synced once, then acknowledged.  The queue is filled first (not timed).  Returns messages/s."""
        destination = f"{self.out.destination}.in.{tag}"
        self.out._fill(destination, self.out.bodies(body, encrypt, count))
        link = StompLink(self.out.settings)
        allowed = DnAllowList(frozenset({slash_dn(self.out.credential.certificate.subject)}))
        bridge = StompInBridge(link, self.server, TrustStore.from_directory(self.out.pki.trust_dir),
                               InSettings(destination=destination, allowed_dns=allowed, workers=default_workers()),
                               incoming=IncomingSpool(self.out.workdir / f"in-{tag}", self.out.workdir / f"in-{tag}.reject"),
                               opener=self.opener())
        try:
            t0 = time.perf_counter()
            stalled = time.monotonic() + 60
            while bridge.counters["accepted"] < count:
                before = bridge.counters["accepted"]
                bridge.serve_once(time.monotonic())
                if bridge.counters["accepted"] > before:
                    stalled = time.monotonic() + 60
                elif time.monotonic() > stalled or any(k.startswith("rejected:") for k in bridge.counters):
                    raise BenchError(f"stomp-in: {bridge.counters} after {count} sent")
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        return count / seconds

    def openssl_cli_in(self, body: bytes, encrypt: bool, count: int, tag: str) -> float:
        """APEL SSM's receiver: per message ``openssl smime -decrypt`` (when encrypted) and ``openssl smime
        -verify`` as processes, then a durable store in a dirq incoming queue and the acknowledgement.  The
        queue is filled first (not timed).  Returns messages/s."""
        destination = f"{self.out.destination}.in-openssl.{tag}"
        self.out._fill(destination, self.out.bodies(body, encrypt, count))
        spool = IncomingSpool(self.out.workdir / f"in-openssl-{tag}")
        decrypt = ["openssl", "smime", "-decrypt", "-inkey", str(self.out.pki.server_key), "-recip",
                   str(self.out.pki.server_cert)]
        verify = ["openssl", "smime", "-verify", "-CApath", str(self.out.pki.trust_dir)]
        signer = slash_dn(self.out.credential.certificate.subject)
        link = StompLink(self.out.settings)
        link.subscribe(destination, ack="client-individual")
        try:
            link.connect()
            t0 = time.perf_counter()
            for _ in range(count):
                frame = link.next_message(30.0)
                if frame is None:
                    raise BenchError("openssl receiver: the broker sent nothing for 30s")
                text = frame.body.decode("ascii")
                if encrypt:
                    text = _openssl(decrypt, text)
                content = _openssl(verify, text)
                spool.accept(content.encode(), signer, frame.headers.get("empa-id", ""))
                link.ack(frame)
            seconds = time.perf_counter() - t0
        finally:
            link.close()
        return count / seconds
