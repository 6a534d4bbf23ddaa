"""stomp-in's memory of accepted signers: a busy sender is validated once, and nothing that could change a
verdict is remembered past the moment it could."""

from __future__ import annotations

import datetime as dt

import pytest

from kit.pki import Pki
from zmqsec.bridges import smime
from zmqsec.bridges.stomp_in import InSettings, Refused, StompInBridge
from zmqsec.bridges.stomplink import BrokerSettings, StompLink
from zmqsec.keys.ca import Role
from zmqsec.keys.dn import DnAllowList


@pytest.fixture
def site(tmp_path) -> Pki:
    pki = Pki.create(tmp_path, server=Role.SERVER, sender=Role.BRIDGE, stranger=Role.BRIDGE)
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    pki.issue("short", Role.BRIDGE, not_after=soon)
    return pki


def _bridge(site: Pki, *signers: str) -> tuple[StompInBridge, list]:
    """A bridge (never connected) allowing ``signers``, and the list of the certificates its trust validated."""
    allowed = DnAllowList(frozenset(site.dn(name) for name in signers))
    bridge = StompInBridge(StompLink(BrokerSettings(hosts=(("127.0.0.1", 1),))), site["server"], site.trust,
                           InSettings(destination="/queue/in", allowed_dns=allowed), publisher=object())
    validated = []
    real = site.trust.validate
    bridge.trust = type("Counting", (), {"validate": lambda _, cert, **kw: validated.append(cert) or real(cert, **kw),
                                          "valid_until": site.trust.valid_until})()
    return bridge, validated


def test_a_signer_is_validated_once_while_nothing_changes(site):
    bridge, validated = _bridge(site, "sender")
    for i in range(5):
        content, signer = bridge.verdict(smime.sign(b"record %d\n" % i, site["sender"]))
        assert content == b"record %d\n" % i and signer == site.dn("sender")
    assert len(validated) == 1
    # Remembered until the first moment time alone could change the verdict: the trust store's, or the
    # certificate's expiry.
    (until,) = bridge._accepted.values()
    assert until == min(site.trust.valid_until, site["sender"].certificate.not_valid_after_utc)


def test_refusals_are_not_remembered_and_expiry_ends_an_acceptance(site):
    bridge, validated = _bridge(site, "sender", "short")
    for _ in range(3):
        with pytest.raises(Refused) as refused:
            bridge.verdict(smime.sign(b"x\n", site["stranger"]))
        assert refused.value.reason == "dn-not-allowed"
    assert len(validated) == 3
    bridge.verdict(smime.sign(b"x\n", site["short"]))
    (until,) = bridge._accepted.values()
    assert until == site["short"].certificate.not_valid_after_utc  # the certificate expires in 5 minutes
    key = next(iter(bridge._accepted))
    bridge._accepted[key] = dt.datetime.now(dt.timezone.utc)  # as if those minutes had passed
    bridge.verdict(smime.sign(b"y\n", site["short"]))
    assert len(validated) == 5  # validated again
