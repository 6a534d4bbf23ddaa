"""A plain STOMP client for the tests, to see what the broker holds without going through zmqsec's bridge."""

from __future__ import annotations

import queue
import time

import stomp

HOST = "127.0.0.1"


class Inbox(stomp.ConnectionListener):
    """Queues each message as (headers, body); the test waits on the queue with a deadline instead of forever."""

    def __init__(self) -> None:
        """An empty inbox."""
        self.messages: queue.Queue[tuple[dict, object]] = queue.Queue()

    def on_message(self, frame) -> None:
        """stomp.py's callback: queue the frame, nothing else (work happens outside the receiver thread)."""
        self.messages.put((dict(frame.headers), frame.body))

    def take(self, expect: int, timeout: float, quiet: float = 0.0) -> list[tuple[dict, object]]:
        """Messages until ``expect`` arrived or ``timeout`` passed; then more until none arrives for ``quiet`` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expect and (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        while quiet > 0:
            try:
                got.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                break
        return got


def drain(port: int, destination: str, expect: int, timeout: float = 30.0, quiet: float = 0.3) -> list:
    """Consume ``destination`` until ``expect`` messages or ``timeout``, then until it stays quiet for ``quiet``
    seconds (so a duplicate right after the last expected message is counted); return (headers, body) pairs."""
    inbox = Inbox()
    conn = stomp.Connection([(HOST, port)], auto_decode=False)
    conn.set_listener("drain", inbox)
    conn.connect(wait=True)
    conn.subscribe(destination, id="drain", ack="auto")
    try:
        return inbox.take(expect, timeout, quiet)
    finally:
        conn.disconnect()


def send(port: int, destination: str, bodies: list[tuple[str, bytes]]) -> None:
    """Send each (empa-id, body) to ``destination`` as a persistent message, as an APEL sender would."""
    conn = stomp.Connection([(HOST, port)], auto_decode=False)
    conn.connect(wait=True)
    for empaid, body in bodies:
        conn.send(destination, body, headers={"empa-id": empaid, "persistent": "true"})
    conn.disconnect()
