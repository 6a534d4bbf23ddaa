"""Replay (docs/PROTOCOL.md §10.4): a server that serves a journal over ROUTER, on its own thread, and the
client link readers use to ask for ranges.

The server's work is bounded per turn (one chunk per request with credit),
it answers every malformed request with an error and goes on, and a client
that stops reading costs at most the socket's small high-water mark.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq

from zmqsec.protocol import replay
from zmqsec.protocol.replay import Cancel, Credit, End, Error, ReplayMessageError, Request, Roots

from .curve import CurveClient, CurveServer, apply_client, apply_server
from .journal import JournalReader
from .transports import bind, connect

log = logging.getLogger("zmqsec.replay")

CHUNK = 256  # data frames read from the journal per request and turn
MAX_FRAMES_PER_REQUEST = 100_000
MAX_CLIENTS = 64
MAX_REQUESTS_PER_CLIENT = 16
IDLE_REQUEST = 60.0  # seconds a request may wait for credit before it is dropped
SNDHWM = 128  # messages queued to one client at most


@dataclass
class _Serving:
    """One request being served."""

    client: bytes
    request: Request
    end_seq: int  # the last data frame this request serves
    next_seq: int
    credit: int
    touched: float
    queue: collections.deque = field(default_factory=collections.deque)  # message parts ready to send
    epochs: set = field(default_factory=set)
    keks: set = field(default_factory=set)
    run_sent: bool = False
    checkpoints: set = field(default_factory=set)  # (first, last) of checkpoints sent
    finished: bool = False


class NoRoots:
    """The roots of an archive (or of a publisher without a journal key): none."""

    @staticmethod
    def answer(_journal, request: Roots) -> Error:
        """Always ``no-keys``."""
        return Error(request.id, replay.NO_KEYS, "this server keeps no keys (an archive)")


class ReplayServer:
    """Serves replay from a journal directory on ``endpoints`` until :meth:`stop`."""

    def __init__(self, journal_dir, endpoints: list[str], *, context: zmq.Context | None = None,
                 curve: CurveServer | None = None, clock=time.monotonic, roots=None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._journal_dir, self._clock = journal_dir, clock
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.RCVHWM, 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, replay.MAX_REQUEST_BYTES + 64)
        self.socket.setsockopt(zmq.LINGER, 0)
        self._release_curve = apply_server(self.socket, curve) if curve else None
        for endpoint in endpoints:
            bind(self.socket, endpoint)
        self.endpoints = [self.socket.getsockopt_string(zmq.LAST_ENDPOINT)] if len(endpoints) == 1 else endpoints
        self._serving: dict[tuple[bytes, int], _Serving] = {}
        self._roots = roots or NoRoots()  # zmqsec.drivers.roots.RootServer: the publisher's holds the runs' roots
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = collections.Counter()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "ReplayServer":
        """Serve on a thread of its own (with its own journal connection)."""
        self._thread = threading.Thread(target=self._run, name="zmqsec-replay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.socket.close()
        if self._release_curve is not None:
            self._release_curve()

    def _run(self) -> None:
        reader = JournalReader(self._journal_dir)
        try:
            while not self._stop.is_set():
                busy = any(s.credit > 0 and (s.queue or not s.finished) for s in self._serving.values())
                if self.socket.poll(0 if busy else 100, zmq.POLLIN):
                    for _ in range(256):  # bounded per turn: a flood cannot starve the serving below
                        try:
                            parts = self.socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._received(parts, reader)
                self._serve(reader)
        except zmq.ContextTerminated:
            pass
        finally:
            reader.close()

    # -- requests ---------------------------------------------------------------------------------

    def _reply(self, client: bytes, message) -> None:
        try:
            self.socket.send_multipart([client, replay.encode(message)], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.stats["replies-dropped"] += 1  # gone, or not reading: it will ask again

    def _received(self, parts: list[bytes], reader: JournalReader) -> None:
        if len(parts) != 2:
            self.stats["bad-request"] += 1
            if parts:
                self._reply(parts[0], Error(0, replay.BAD_REQUEST, "a request is one message part"))
            return
        client, data = parts
        try:
            message = replay.decode_client(data)
        except ReplayMessageError as exc:
            self.stats["bad-request"] += 1
            self._reply(client, Error(exc.request_id, replay.BAD_REQUEST, str(exc)))
            return
        key = (client, message.id)
        if isinstance(message, Credit):
            serving = self._serving.get(key)
            if serving is not None:
                serving.credit = min(replay.MAX_CREDIT, serving.credit + message.credit)
                serving.touched = self._clock()
            return
        if isinstance(message, Cancel):
            self._serving.pop(key, None)
            return
        if isinstance(message, Roots):
            self._answer_roots(client, message, reader)
            return
        self._start(client, message, reader)

    def _answer_roots(self, client: bytes, request: Roots, reader: JournalReader) -> None:
        """A path envelope with the roots of a past run the reader is entitled to, then the end; or an error."""
        self.stats["roots-requests"] += 1
        answer = self._roots.answer(reader, request)
        if isinstance(answer, Error):
            self._reply(client, answer)
            return
        try:
            self.socket.send_multipart([client, replay.frame_header(request.id), *answer], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.stats["replies-dropped"] += 1
            return
        self.stats["roots-answered"] += 1
        self._reply(client, End(request.id, 0, 0, 0))

    def _start(self, client: bytes, request: Request, reader: JournalReader) -> None:
        clients = {c for c, _ in self._serving}
        mine = sum(1 for c, _ in self._serving if c == client)
        if (client not in clients and len(clients) >= MAX_CLIENTS) or mine >= MAX_REQUESTS_PER_CLIENT:
            self.stats["busy"] += 1
            self._reply(client, Error(request.id, replay.BUSY, "too many clients or requests in flight; ask again later"))
            return
        info = reader.run(request.stream, request.run)
        if info is None:
            self.stats["unknown-run"] += 1
            self._reply(client, Error(request.id, replay.UNKNOWN_RUN, f"run {request.run.hex()} is not in this journal"))
            return
        last = info.last_seq if request.last == 0 else min(request.last, info.last_seq)
        last = min(last, request.first + MAX_FRAMES_PER_REQUEST - 1)
        self.stats["requests"] += 1
        self._serving[(client, request.id)] = _Serving(client, request, last, request.first, request.credit,
                                                       self._clock())

    # -- serving ----------------------------------------------------------------------------------

    def _serve(self, reader: JournalReader) -> None:
        now = self._clock()
        for key, serving in list(self._serving.items()):
            if now - serving.touched > IDLE_REQUEST:
                del self._serving[key]  # a client that stopped granting credit
                continue
            if not serving.queue and not serving.finished:
                self._fill(serving, reader)
            while serving.queue and (serving.credit > 0 or len(serving.queue[0]) == 1):  # the end needs no credit
                try:
                    self.socket.send_multipart([serving.client, *serving.queue[0]], zmq.NOBLOCK)
                except zmq.Again:
                    break  # its queue is full: the client is slow; later
                except zmq.ZMQError:
                    serving.queue.clear()
                    serving.finished = True
                    break
                message = serving.queue.popleft()
                if len(message) == 3:
                    serving.credit -= 1
                    self.stats["frames"] += 1
            if serving.finished and not serving.queue:
                del self._serving[key]

    @staticmethod
    def _announce(s: _Serving, reader: JournalReader, header: bytes, epoch: int) -> None:
        """Queue what an epoch's frames need: its group announcements (the reader's group only), its epoch
        announcement, and the first time the run frame."""
        s.epochs.add(epoch)
        announcement = reader.announcement(s.request.run, epoch)
        if announcement is None:
            return
        keks = [k for k in announcement[0].split(b"\0") if k and k not in s.keks]
        for kek, topic, body in reader.group_announcements(s.request.run, keks):
            s.keks.add(kek)
            if s.request.tags.startswith(kek.split(b".")[0]):
                s.queue.append([header, topic, body])
        s.queue.append([header, *announcement[1:]])
        if not s.run_sent:
            s.run_sent = True
            run_frame = reader.run_frame(s.request.run)
            if run_frame is not None:
                s.queue.append([header, *run_frame])

    def _fill(self, s: _Serving, reader: JournalReader) -> None:
        """Queue the next chunk: the data frames, each epoch's announcements just before its first frame (and
        the run frame before the first), the checkpoints after the last frame each covers; or the end."""
        request, header = s.request, replay.frame_header(s.request.id)
        rows = reader.data(request.run, s.next_seq, s.end_seq, CHUNK) if s.next_seq <= s.end_seq else []
        if not rows:
            info = reader.run(request.stream, request.run)
            first, last = (info.first_available, info.last_available) if info else (0, 0)
            s.queue.append([replay.encode(End(request.id, s.next_seq - 1, first, last))])
            s.finished = True
            return
        checkpoints = [c for c in reader.checkpoints(request.run, rows[0][0], rows[-1][0])
                       if (c[0], c[1]) not in s.checkpoints]
        for seq, epoch, topic, body in rows:
            if epoch not in s.epochs:  # the epoch's keys just before its first frame (a reader keeps only a few)
                self._announce(s, reader, header, epoch)
            s.queue.append([header, topic, body])
            while checkpoints and checkpoints[0][1] <= seq:
                first, last, c_topic, c_body = checkpoints.pop(0)
                s.checkpoints.add((first, last))
                s.queue.append([header, c_topic, c_body])
        for first, last, c_topic, c_body in checkpoints:  # covering frames beyond this chunk
            s.checkpoints.add((first, last))
            s.queue.append([header, c_topic, c_body])
        s.next_seq = rows[-1][0] + 1


class ReplayLink:
    """A reader's connections to its replay servers, in order of preference: one DEALER each."""

    def __init__(self, endpoints: list[str], *, context: zmq.Context | None = None,
                 curve: CurveClient | None = None) -> None:
        ctx = context or zmq.Context.instance()
        self.endpoints = list(endpoints)
        self.sockets = []
        for endpoint in self.endpoints:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 10_000)
            sock.setsockopt(zmq.SNDHWM, 1000)
            if curve:
                apply_client(sock, curve)
            connect(sock, endpoint)
            self.sockets.append(sock)

    def send(self, index: int, message) -> None:
        """One client message to server ``index`` (dropped if that server's queue is full: it is re-asked)."""
        try:
            self.sockets[index].send(replay.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def receive(self, limit: int = 1024) -> list[tuple[int, list[bytes]]]:
        """Up to ``limit`` messages waiting, as (server index, parts)."""
        out: list[tuple[int, list[bytes]]] = []
        for index, sock in enumerate(self.sockets):
            while len(out) < limit:
                try:
                    out.append((index, sock.recv_multipart(zmq.NOBLOCK)))
                except zmq.Again:
                    break
        return out

    def close(self) -> None:
        """Close every connection."""
        for sock in self.sockets:
            sock.close()
