"""Feeding a sender's output to receivers: the ZeroMQ messages among its actions."""

from __future__ import annotations

from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.sender import Send, StreamSender, wire
from zmqsec.protocol import frames
from zmqsec.protocol.groups import reader_topics
from zmqsec.protocol.announce import open_announcement, verify_announcement
from zmqsec.protocol.datacipher import DataKey

_EMITTING = frozenset({"start", "publish", "flush", "tick", "readers_changed", "subscription_seen"})


def kinds(actions) -> list[bytes]:
    """The frame kinds of every :class:`Send` among ``actions``, in order."""
    return [a.kind for a in actions if isinstance(a, Send)]


def reader_set(credentials) -> ReaderSet:
    """The reader set of these credentials' certificates."""
    return ReaderSet(tuple(Reader(c.certificate) for c in credentials))


def reaching(stream: str, credential, messages) -> list:
    """What ZeroMQ's prefix matching lets through to this reader (its subscriptions: data, checkpoints, epoch
    announcements, run frames, its group and key tree topics)."""
    topics = tuple(reader_topics(stream, credential.certificate))
    return [m for m in messages if m[0].startswith(topics)]


def feed(receiver, messages, now: float = 0.0) -> list:
    """Every message into ``receiver`` at ``now``: the events, in order."""
    events = []
    for m in messages:
        events += receiver.frame_received(m, now)
    return events


def publish(sender, count: int, now: float = 0.0, start: int = 0) -> list:
    """Records ``record <start>`` ... through a :class:`WireSender`, then a checkpoint: the messages."""
    out = []
    for i in range(start, start + count):
        out += sender.publish(b"record %d" % i, now)
    return out + sender.flush(now)


def of_kind(messages, kind: bytes) -> list:
    """The messages of one frame kind (b"G", b"T", b"K", ...), by topic."""
    return [m for m in messages if m[0].split(b"\0")[1][:1] == kind]


def size(messages) -> int:
    """Their bytes on the wire, every part."""
    return sum(len(p) for m in messages for p in m)


class WireSender:
    """A :class:`StreamSender` whose inputs return only the messages to send, as a socket would carry them;
    ``actions`` is the sender itself, for tests about its typed actions."""

    def __init__(self, *args, **kwargs) -> None:
        """The arguments of :class:`StreamSender`."""
        self.actions = StreamSender(*args, **kwargs)

    def __getattr__(self, name: str):
        """The sender's own attribute; for an input that emits actions, a wrapper returning only the messages."""
        attr = getattr(self.actions, name)
        if name in _EMITTING:
            return lambda *a, **k: wire(attr(*a, **k))
        return attr


class Insider:
    """An authorized reader turned forger: it opens announcements with its own key, as every reader
    can, and seals frames of its own under the real data key."""

    def __init__(self, credential, trust, stream: str = "apel.jobs") -> None:
        """An insider with reader ``credential``, checking announcements against ``trust``, on ``stream``."""
        self.credential, self.trust = credential, trust
        self.topic = frames.topic_for(stream, frames.DATA)
        self.keys: dict[tuple[bytes, int], DataKey] = {}

    def learn(self, parts: list[bytes]) -> bool:
        """Take the data key from an epoch announcement (True when one was learned)."""
        try:
            frame = frames.decode(parts)
        except frames.FrameError:
            return False
        if not isinstance(frame, frames.Announcement):
            return False
        publisher = verify_announcement(frame, self.trust)
        epoch_key = open_announcement(frame, publisher, self.credential)
        self.keys[(frame.stream_id, frame.epoch)] = DataKey(epoch_key.key)
        return True

    def forge(self, stream_id: bytes, epoch: int, seq: int, payload: bytes) -> list[bytes]:
        """A data frame the publisher never sent, sealed under the epoch's real key."""
        ciphertext = self.keys[(stream_id, epoch)].seal(self.topic, stream_id, epoch, seq, payload)
        return frames.encode(frames.DataFrame(self.topic, stream_id, epoch, seq, ciphertext))
