"""The Python API as the README shows it: Publisher with blocking and asyncio Subscribers,
across many key rotations, with nothing lost."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest

from keys.ca import CertificateAuthority, Role
from keys.dn import DnAllowList, parse_slash_dn
from keys.pemfiles import Credential
from keys.registry import ReaderRegistry
from zmqsec import AsyncSubscriber, Publisher, RotationPolicy, Subscriber


PUBLISHERS = DnAllowList(frozenset({"/O=zmqsec test/CN=publisher"}))


@pytest.fixture
def site(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca", subject=parse_slash_dn("/O=zmqsec test/CN=API CA"), rsa_bits=2048)
    pub = ca.issue(role=Role.PUBLISHER, cn="publisher", out_dir=tmp_path)
    reader = ca.issue(role=Role.READER, cn="reader", out_dir=tmp_path)
    registry = ReaderRegistry(tmp_path / "readers.d")
    registry.add(reader.certificate)
    return {"ca": ca, "pub": pub, "reader": reader, "registry": registry, "dir": tmp_path}


def _publish_process(site, endpoint, count, ready, go):
    """Runs in its own process: a publisher rotating every 20 messages."""
    publisher = Publisher("apel.jobs", [endpoint], Credential.load(site["pub"].cert_path, site["pub"].key_path),
                          site["registry"], trust_dir=site["ca"].trust_dir,
                          policy=RotationPolicy(max_messages=20, checkpoint_max=16))
    ready.set()
    go.wait(30)
    assert publisher.wait_for_subscribers(1, timeout=30)  # the reader subscribed and got the current key
    for i in range(count):
        publisher.publish(b"record %05d" % i)
    publisher.run_idle(1.0)  # last checkpoint, then linger
    publisher.close()
    os._exit(0)


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_many_rotations_lose_nothing_across_processes(site, flavour):
    endpoint = f"ipc://{site['dir']}/api.ipc"
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_publish_process, args=(site, endpoint, 1000, ready, go))
    proc.start()
    assert ready.wait(30)
    cred = Credential.load(site["reader"].cert_path, site["reader"].key_path)
    received, epochs = [], set()
    if flavour == "blocking":
        with Subscriber("apel.jobs", [endpoint], cred, site["ca"].trust_dir, allowed_publishers=PUBLISHERS) as sub:
            go.set()
            while (message := sub.receive(timeout=10)) is not None:
                received.append(message.payload)
                epochs.add(message.epoch)
                if len(received) == 1000:
                    break
            counters = dict(sub.counters)
    else:
        async def read():
            sub = AsyncSubscriber("apel.jobs", [endpoint], cred, site["ca"].trust_dir, allowed_publishers=PUBLISHERS)
            go.set()
            try:
                while (message := await sub.receive(timeout=10)) is not None:
                    received.append(message.payload)
                    epochs.add(message.epoch)
                    if len(received) == 1000:
                        break
            finally:
                sub.close()
            return dict(sub.counters)

        counters = asyncio.run(read())
    proc.join(30)
    assert proc.exitcode == 0
    assert received == [b"record %05d" % i for i in range(1000)]
    assert len(epochs) == 50  # a new key every 20 messages, every one usable
    assert counters.get("gap", 0) == 0 and not any(k.startswith("rejected:") for k in counters), counters
