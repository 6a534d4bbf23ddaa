"""The two systems compared: plain pyzmq and zmqsec, each as a publisher and a reader behind the
same small interface, so one worker process drives either."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.registry import ReaderRegistry

from zmqsec.drivers.journal import Journal
from zmqsec.drivers.publisher import Publisher
from zmqsec.drivers.subscriber import Subscriber

from .config import PLAIN, STREAM
from .grouping import policy

HWM = 100_000  # both systems: the zmqsec Publisher's default SNDHWM and the Subscriber's RCVHWM


@dataclass(frozen=True)
class StreamSpec:
    """What a stream worker needs (picklable)."""

    system: str
    trust_dir: Path
    publisher_cert: Path
    publisher_key: Path
    publisher_dn: str
    registry: Path | None = None
    reader_cert: Path | None = None
    reader_key: Path | None = None
    endpoint: str = "tcp://127.0.0.1:*"
    group_size: int = 0
    journal: Path | None = None  # zmqsec publisher: journal every frame here (docs/PROTOCOL.md §10.3)


def publisher_side(spec: StreamSpec):
    """The publisher of ``spec.system``, bound to ``spec.endpoint``."""
    return (_PlainPublisher if spec.system == PLAIN else _ZmqsecPublisher)(spec)


def reader_side(spec: StreamSpec):
    """The reader of ``spec.system``, connected to ``spec.endpoint``."""
    return (_PlainReader if spec.system == PLAIN else _ZmqsecReader)(spec)


class _PlainPublisher:
    """An XPUB socket (a PUB that also shows subscriptions, as zmqsec's Publisher uses), nothing else."""

    def __init__(self, spec: StreamSpec) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, HWM)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.bind(spec.endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.topic = STREAM.encode() + b"\x00D"
        self.subscriptions = 0
        self.epoch = 0
        self.watch_interval = None

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds``, counting the subscriptions that arrive."""
        if self.socket.poll(max(0, int(seconds * 1000)), zmq.POLLIN):
            while self.socket.poll(0, zmq.POLLIN):
                if self.socket.recv()[:1] == b"\x01":
                    self.subscriptions += 1

    def publish(self, payload: bytes) -> None:
        """Send one message."""
        self.socket.send_multipart([self.topic, payload], copy=False)

    def finish(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()


class _ZmqsecPublisher:
    """A zmqsec :class:`Publisher` with a registry of readers (and a journal when the spec names one)."""

    def __init__(self, spec: StreamSpec) -> None:
        self.journal = Journal(spec.journal) if spec.journal else None
        self.publisher = Publisher(STREAM, [spec.endpoint], Credential.load(spec.publisher_cert, spec.publisher_key),
                                   ReaderRegistry(spec.registry), trust_dir=spec.trust_dir, policy=policy(spec.group_size),
                                   sndhwm=HWM, journal=self.journal)
        self.endpoint = self.publisher.endpoints[0]

    @property
    def subscriptions(self) -> int:
        """Subscriptions the publisher has seen."""
        return self.publisher.subscriptions

    @property
    def epoch(self) -> int:
        """The sender's current epoch."""
        return self.publisher.sender.epoch

    @property
    def watch_interval(self) -> float:
        """Seconds between the publisher's looks at its registry."""
        return self.publisher.watch_interval

    def idle(self, seconds: float) -> None:
        """Service the stream for ``seconds``."""
        self.publisher.run_idle(seconds)  # checkpoints, re-announcements and the registry watch, on time

    def publish(self, payload: bytes) -> None:
        """Encrypt and send one message."""
        self.publisher.publish(payload)

    def finish(self) -> None:
        """Send the checkpoint that vouches for the last messages."""
        self.publisher.flush()

    def close(self) -> None:
        """Close the publisher (and its journal)."""
        self.publisher.close()
        if self.journal is not None:
            self.journal.close()


class _PlainReader:
    """A SUB socket subscribed to the stream."""

    def __init__(self, spec: StreamSpec) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, STREAM.encode() + b"\x00")
        self.socket.connect(spec.endpoint)

    def wait_ready(self, timeout: float) -> bool:
        """Ready at once: only the publisher sees when the subscription has arrived."""
        return True

    def next(self, timeout: float) -> bytes | None:
        """The next payload, or None after ``timeout`` seconds without one."""
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK)[1]
        except zmq.Again:
            if not self.socket.poll(max(1, int(timeout * 1000)), zmq.POLLIN):
                return None
            return self.socket.recv_multipart(zmq.NOBLOCK)[1]

    def problems(self) -> dict:
        """None: plain pyzmq checks nothing."""
        return {}

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()


class _ZmqsecReader:
    """A zmqsec :class:`Subscriber` that counts gaps."""

    def __init__(self, spec: StreamSpec) -> None:
        self.gaps = 0
        self.subscriber = Subscriber(STREAM, [spec.endpoint], Credential.load(spec.reader_cert, spec.reader_key),
                                     spec.trust_dir, allowed_publishers=DnAllowList(frozenset({spec.publisher_dn})),
                                     on_gap=self._gap)
        self.early: list[bytes] = []

    def _gap(self, gap) -> None:
        self.gaps += gap.count

    def wait_ready(self, timeout: float) -> bool:
        """Until the reader holds the epoch key (slow joiner: nothing may be published before)."""
        deadline = time.monotonic() + timeout
        while self.subscriber.events.epoch == 0 and time.monotonic() < deadline:
            message = self.subscriber.receive(timeout=0.05)
            if message is not None:
                self.early.append(message.payload)
        return self.subscriber.events.epoch > 0

    def next(self, timeout: float) -> bytes | None:
        """The next verified payload, or None after ``timeout`` seconds without one."""
        message = self.subscriber.receive(timeout=timeout)
        return message.payload if message is not None else None

    def problems(self) -> dict:
        """Gaps and rejections counted so far."""
        rejected = {k: v for k, v in self.subscriber.counters.items() if k.startswith("rejected:")}
        return {"gaps": self.gaps, **rejected}

    def close(self) -> None:
        """Close the subscriber."""
        self.subscriber.close()
