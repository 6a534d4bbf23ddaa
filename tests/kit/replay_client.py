"""A replay client by hand (docs/PROTOCOL.md §10.4): one DEALER, messages sent and answers collected, for the
tests of replay servers."""

from __future__ import annotations

import time

import zmq

from zmqsec.protocol import replay as codec


class Client:
    """A reader's side of the protocol, by hand: one DEALER, messages sent and answers collected."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        """A DEALER on ``context``, connected to ``endpoint``."""
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)

    def send(self, message) -> None:
        """One client message."""
        self.sock.send(codec.encode(message))

    def receive(self, timeout: float) -> tuple[str, int, list, list[bytes]] | None:
        """The next server message as (kind, request id, fields, the frame's parts), or None after ``timeout`` s."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        parts = self.sock.recv_multipart()
        kind, rid, rest = codec.decode_server(parts[0])
        assert (len(parts) == 3) == (kind == codec.FRAME), parts
        return kind, rid, rest, parts[1:]

    def collect(self, request_id: int, timeout: float = 30.0, limit: int | None = None):
        """Frames of ``request_id`` until its ``end`` or ``error`` (or ``limit`` frames): (frames, final message)."""
        got, deadline = [], time.monotonic() + timeout
        while limit is None or len(got) < limit:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            assert message is not None, f"no answer to request {request_id} within {timeout} s ({len(got)} frames)"
            kind, rid, rest, parts = message
            assert rid == request_id, message
            if kind == codec.FRAME:
                got.append(tuple(parts))
            else:
                return got, (kind, rest)
        return got, None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
