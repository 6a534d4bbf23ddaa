"""Captures: a stream's raw frames recorded without any key, and read back.

A capture file is a sequence of msgpack records ``[timestamp, [topic, body]]``;
announcements are also written beside it as ``.der`` files for openssl.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgpack
import zmq

from zmqsec.keys.errors import KeyFileError
from zmqsec.protocol import frames

from .status import Stop
from .transports import connect

log = logging.getLogger("zmqsec")


def record(endpoints: list[str], out: Path, *, stream: str | None = None, count: int = 0, duration: float = 0.0,
           stop: Stop | None = None) -> int:
    """Record the frames of ``endpoints`` into ``out/frames.zcap``; returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\x00" if stream else b"")
    for endpoint in endpoints:
        connect(socket, endpoint)
    deadline = time.monotonic() + duration if duration else None
    recorded = 0
    with open(out / "frames.zcap", "ab") as capture:
        while not (stop and stop.requested) and (deadline is None or time.monotonic() < deadline):
            if not socket.poll(100, zmq.POLLIN):
                continue
            parts = socket.recv_multipart()
            capture.write(msgpack.packb([time.time(), parts], use_bin_type=True))
            capture.flush()
            recorded += 1
            try:
                frame = frames.decode(parts)
            except frames.FrameError:
                continue
            if isinstance(frame, frames.Announcement):
                stem = out / f"announcement-{frame.stream_id.hex()[:12]}-epoch{frame.epoch}"
                if not stem.with_suffix(".der").exists():
                    stem.with_suffix(".der").write_bytes(frame.envelope)
                    stem.with_suffix(".sig.der").write_bytes(frame.signature)
            if count and recorded >= count:
                break
    socket.close()
    return recorded


def read_capture(path: Path):
    """Yield (timestamp, parts) from a capture file; a damaged tail ends the file with a warning."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open capture ({exc.strerror})") from None
    with fh:
        unpacker = msgpack.Unpacker(fh, raw=False, max_bin_len=frames.MAX_ANNOUNCEMENT_FRAME)
        try:
            for record in unpacker:
                if not (isinstance(record, list) and len(record) == 2 and isinstance(record[1], list)):
                    raise ValueError("record is not [timestamp, parts]")
                yield record[0], [bytes(p) for p in record[1]]
        except (ValueError, msgpack.UnpackException) as exc:
            log.warning("%s: capture damaged after the last good frame (%s)", path, exc)
