"""Broker -> spool/stream: EMI S/MIME messages from ActiveMQ, verified, stored, then acknowledged.

For each message (client-individual acknowledgement): decrypt if it is
enveloped for our certificate, verify the signature, validate the signer's
certificate with the trust layer (chain, CRLs, DN allow-list), write it
durably -- to an SSM-schema incoming dirq queue and/or into a zmqsec stream --
and only then ACK.  A refused message goes to the reject queue with its reason
and is acknowledged too, so the broker does not redeliver it forever.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from keys.dn import DnAllowList, slash_dn
from keys.errors import CertificateRejected
from keys.pemfiles import Credential
from keys.trust import CrlPolicy, TrustStore
from zmqsec import cms, smime
from zmqsec.spool import IncomingSpool

from .stomplink import Frame, StompLink

log = logging.getLogger("zmqsec.bridge.in")


@dataclass(frozen=True)
class InSettings:
    destination: str
    max_bytes: int = 16 * 1024 * 1024
    crl: CrlPolicy = CrlPolicy.REQUIRE
    allowed_dns: DnAllowList | None = None


class StompInBridge:
    def __init__(self, link: StompLink, credential: Credential, trust: TrustStore, settings: InSettings,
                 incoming: IncomingSpool | None = None, publisher=None) -> None:
        if incoming is None and publisher is None:
            raise ValueError("stomp-in needs an incoming spool, a stream publisher, or both")
        self.link, self.credential, self.trust, self.settings = link, credential, trust, settings
        self.incoming, self.publisher = incoming, publisher
        self.counters: Counter = Counter()
        link.subscribe(settings.destination, ack="client-individual")

    def verdict(self, body: bytes) -> tuple[bytes, str]:
        """(content, signer DN) of an acceptable message, or raise with a reason."""
        if len(body) > self.settings.max_bytes:
            raise smime.MessageTooLarge(f"message of {len(body)} bytes exceeds {self.settings.max_bytes}")
        opened = smime.open_message(body, self.credential)
        self.trust.validate(opened.signer, untrusted=opened.certificates, crl=self.settings.crl,
                            allowed_dns=self.settings.allowed_dns)
        return opened.content, slash_dn(opened.signer.subject)

    def handle(self, frame: Frame) -> bool:
        """Store (or reject) one message durably, then acknowledge it.  True if accepted."""
        empaid = frame.headers.get("empa-id", "noid")
        try:
            content, signer = self.verdict(frame.body)
        except (cms.CmsError, CertificateRejected) as exc:
            reason, detail = exc.reason, str(exc)
        except Exception as exc:  # a bug of ours must not stop the bridge nor lose the message
            log.exception("message %s: unexpected error while verifying", empaid)
            reason, detail = "internal-error", exc.__class__.__name__
        else:
            reason = None
        if reason is not None:
            self.counters[f"rejected:{reason}"] += 1
            log.warning("message %s rejected [%s]: %s", empaid, reason, detail)
            if self.incoming is not None:
                self.incoming.reject(frame.body[:self.settings.max_bytes], f"{reason}: {detail}", None, empaid)
            self.link.ack(frame)
            return False
        # Storing may fail (disk full, no reader for the stream): then no ACK, and the broker redelivers.
        if self.incoming is not None and self.incoming.accept(content, signer, empaid) is None:
            self.counters["rejected:not-utf8"] += 1
        if self.publisher is not None:
            self.publisher.publish(content)
        self.link.ack(frame)
        self.counters["accepted"] += 1
        log.info("message %s from %s accepted", empaid, signer)
        return True
