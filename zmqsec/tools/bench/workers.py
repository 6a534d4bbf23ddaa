"""Worker processes: publisher and reader run in processes of their own (multiprocessing, spawn),
driven by the parent over a pipe.

Wall-clock nanoseconds (CLOCK_REALTIME, one machine) are the only times compared across
processes: a payload starts with its send time, so a reader measures latency.
"""

from __future__ import annotations

import dataclasses
import os
import time

from zmqsec.keys.ca import CertificateAuthority
from zmqsec.keys.pemfiles import load_certificate

from .config import BenchError
from .stats import rss
from .systems import StreamSpec, publisher_side, reader_side


def _payload(size: int, filler: bytes, ts_ns: int) -> bytes:
    return ts_ns.to_bytes(8, "big") + filler[8:size]


def _publisher_worker(conn, spec: StreamSpec) -> None:
    """Publisher process: bind, then obey the parent's commands; between them keep the stream serviced."""
    started = time.perf_counter()
    side = publisher_side(spec)
    conn.send(("bound", side.endpoint, time.perf_counter() - started, rss()))
    filler = os.urandom(1 << 17)
    while True:
        while not conn.poll(0):
            side.idle(0.02)
        command, *args = conn.recv()
        if command == "subscribers":
            wanted, timeout = args
            deadline = time.monotonic() + timeout
            while side.subscriptions < wanted and time.monotonic() < deadline:
                side.idle(0.02)
            conn.send(("subscribed", side.subscriptions >= wanted))
        elif command == "burst":
            count, size = args
            t0 = time.time_ns()
            for _ in range(count):
                side.publish(_payload(size, filler, time.time_ns()))
            side.finish()
            conn.send(("sent", t0, time.time_ns()))
        elif command == "paced":
            count, size, rate = args
            interval, start, t0 = 1.0 / rate, time.perf_counter(), time.time_ns()
            for i in range(count):
                due = start + i * interval
                while (left := due - time.perf_counter()) > 0:
                    side.idle(left)
                side.publish(_payload(size, filler, time.time_ns()))
            side.finish()
            conn.send(("sent", t0, time.time_ns()))
        elif command == "revoke":
            # A revocation request as an operator makes it: the certificate leaves the registry directory.
            path, timeout = args
            epoch = side.epoch
            t0 = time.perf_counter()
            os.unlink(path)
            while side.epoch == epoch and time.perf_counter() - t0 < timeout:
                side.idle(0.005)
            conn.send(("revoked", time.perf_counter() - t0, side.epoch, epoch, side.watch_interval))
        elif command == "revoke-crl":
            # The other way an operator revokes: `zmqsec keys revoke` puts the certificate on the CRL.
            ca_dir, path, timeout = args
            epoch = side.epoch
            t0 = time.perf_counter()
            CertificateAuthority.open(ca_dir).revoke(load_certificate(path))
            while side.epoch == epoch and time.perf_counter() - t0 < timeout:
                side.idle(0.005)
            conn.send(("revoked", time.perf_counter() - t0, side.epoch, epoch, side.watch_interval))
        elif command == "stop":
            side.close()
            conn.send(("stopped", rss()))
            return


def _reader_worker(conn, spec: StreamSpec) -> None:
    """Reader process: connect, wait for the key (zmqsec), then count and time what is delivered."""
    side = reader_side(spec)
    conn.send(("ready", side.wait_ready(60.0)))
    while True:
        command, *args = conn.recv()
        if command == "expect":
            count, idle_timeout, latency = args
            got, first, last, latencies = 0, 0, 0, []
            while got < count:
                payload = side.next(idle_timeout)
                if payload is None:
                    break
                now = time.time_ns()
                first = first or now
                last = now
                got += 1
                if latency:
                    latencies.append((now - int.from_bytes(payload[:8], "big")) / 1e6)
            conn.send(("got", got, first, last, latencies, side.problems()))
        elif command == "stop":
            side.close()
            conn.send(("stopped", rss()))
            return


class Worker:
    """A spawned process and the parent's end of its pipe."""

    def __init__(self, ctx, target, *args) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    def call(self, *command, timeout: float = 600.0):
        """Send ``command`` (if any) and return the worker's answer."""
        if command:
            self.conn.send(command)
        return self.receive(timeout)

    def receive(self, timeout: float = 600.0):
        """The worker's next message; :class:`BenchError` if it dies or says nothing within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise BenchError(f"worker {self.process.name} exited with code {self.process.exitcode}")
            if time.monotonic() > deadline:
                raise BenchError(f"worker {self.process.name}: no answer within {timeout:.0f}s")
        return self.conn.recv()

    def stop(self) -> dict:
        """Stop the worker (killing it if it does not stop); its last RSS figures, or {}."""
        try:
            if self.process.is_alive():
                return self.call("stop", timeout=30)[1]
        except (BenchError, OSError, EOFError):
            pass
        finally:
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        return {}


def in_worker(ctx, target, spec, timeout: float = 3600.0):
    """Run ``target(conn, spec)`` in a process of its own and return the one thing it sends."""
    worker = Worker(ctx, target, spec)
    try:
        return worker.receive(timeout)
    finally:
        worker.process.join(30)
        if worker.process.is_alive():
            worker.process.kill()


class StreamPair:
    """One publisher process and one reader process of one system, connected and ready."""

    def __init__(self, ctx, spec: StreamSpec) -> None:
        self.system = spec.system
        self.publisher = Worker(ctx, _publisher_worker, spec)
        self.reader = None
        try:
            _, endpoint, self.setup_s, self.publisher_rss = self.publisher.receive()
            self.reader = Worker(ctx, _reader_worker, dataclasses.replace(spec, endpoint=endpoint))
            if not self.publisher.call("subscribers", 1, 60.0)[1]:
                raise BenchError(f"{spec.system}: the reader's subscription never reached the publisher")
            if not self.reader.receive()[1]:
                raise BenchError(f"{spec.system}: the reader got no key within 60s")
        except BaseException:
            self.stop()
            raise

    def run(self, command: str, count: int, size: int, *extra, latency: bool = False, idle_timeout: float = 10.0):
        """Publish ``count`` messages; returns (delivered, seconds from first send to last delivery, latencies, problems)."""
        self.reader.conn.send(("expect", count, idle_timeout, latency))
        _, t0, _ = self.publisher.call(command, count, size, *extra)
        _, got, _, last, latencies, problems = self.reader.receive()
        return got, max(1e-9, (last - t0) / 1e9), latencies, problems

    def stop(self) -> dict:
        """Stop both processes; their RSS figures by role."""
        figures = {"reader": self.reader.stop() if self.reader else {}}
        figures["publisher"] = self.publisher.stop()
        return figures
