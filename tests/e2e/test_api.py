"""The Python API as the README shows it: Publisher with blocking and asyncio Subscribers,
across many key rotations, with nothing lost."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import pytest

from zmqsec import AsyncSubscriber, Publisher, RotationPolicy, Subscriber
from zmqsec.keys.dn import DnAllowList


def _publish_process(site, endpoint, count, ready, go, done):
    """Runs in its own process: a publisher rotating every 20 messages."""
    publisher = Publisher("apel.jobs", [endpoint], site["publisher"], site.registry, trust_dir=site.trust_dir,
                          policy=RotationPolicy(max_messages=20, checkpoint_max=16))
    ready.set()
    go.wait(30)
    assert publisher.wait_for_subscribers(1, timeout=30)  # the reader subscribed and got the current key
    for i in range(count):
        publisher.publish(b"record %05d" % i)
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:  # timers run (the last checkpoint) until the reader is done
        publisher.run_idle(0.05)
    publisher.close()
    os._exit(0)


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_many_rotations_lose_nothing_across_processes(site, flavour):
    endpoint = f"ipc://{site.dir}/api.ipc"
    publishers = DnAllowList(frozenset({site.publisher_dn}))
    ctx = multiprocessing.get_context("fork")
    ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_publish_process, args=(site, endpoint, 1000, ready, go, done))
    proc.start()
    assert ready.wait(30)
    cred = site["portal"]
    received, epochs = [], set()
    try:
        if flavour == "blocking":
            with Subscriber("apel.jobs", [endpoint], cred, site.trust_dir, allowed_publishers=publishers) as sub:
                go.set()
                while (message := sub.receive(timeout=10)) is not None:
                    received.append(message.payload)
                    epochs.add(message.epoch)
                    if len(received) == 1000:
                        break
                counters = dict(sub.counters)
        else:
            async def read():
                sub = AsyncSubscriber("apel.jobs", [endpoint], cred, site.trust_dir, allowed_publishers=publishers)
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
    finally:
        done.set()  # the publisher may stop
    proc.join(30)
    assert proc.exitcode == 0
    assert received == [b"record %05d" % i for i in range(1000)]
    assert len(epochs) == 50  # a new key every 20 messages, every one usable
    assert counters.get("gap", 0) == 0 and not any(k.startswith("rejected:") for k in counters), counters
