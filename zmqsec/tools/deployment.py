"""The demo's processes: ``zmqsec`` daemons started, killed and restarted as an operator would, their
status files, a private ActiveMQ when no broker answers, and a clean stop of everything."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from zmqsec.drivers.spool import IncomingSpool
from zmqsec.errors import ZmqsecError


class DemoError(ZmqsecError):
    """The demo could not set up or a daemon failed; the message names the log to read."""


def parse_broker(text: str) -> tuple[str, int]:
    """``--broker HOST:PORT`` as (host, port); raises :class:`DemoError` for anything else."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise DemoError(f"--broker {text!r}: expected HOST:PORT, e.g. localhost:61613")
    return host, int(port)


def why_no_stomp(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why host:port cannot serve as the demo's broker, or None if it accepts an anonymous STOMP CONNECT."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:%s\n\n\x00" % host.encode())
            reply = sock.recv(256)
            sock.sendall(b"DISCONNECT\n\n\x00")
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    return None if reply.startswith(b"CONNECTED") else "it does not accept a STOMP CONNECT"


def free_port() -> int:
    """A free TCP port on loopback (for the demo's endpoints and its private broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def zmqsec_command(*args) -> list[str]:
    """The command line that runs ``zmqsec ARGS`` with this interpreter."""
    return [sys.executable, "-m", "zmqsec.cli", *map(str, args)]


@dataclass
class Daemon:
    """One process the demo started: its name, the process, and the log it writes."""

    name: str
    proc: subprocess.Popen
    log: Path
    args: tuple


class Deployment:
    """The running daemons of the demo, their status files, and a clean stop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.status_dir = workdir / "status"
        self.logs.mkdir()
        self.status_dir.mkdir()
        self.daemons: list[Daemon] = []
        self.private_broker: Path | None = None

    def start(self, name: str, *args) -> None:
        """Start ``zmqsec ARGS`` as the daemon ``name``, its output appended to ``logs/NAME.log``."""
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(zmqsec_command("--log-level", "INFO", *args), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.daemons.append(Daemon(name, proc, log, args))

    def kill(self, name: str) -> None:
        """kill -9 the daemon ``name`` (no clean stop: whatever it held in memory is gone)."""
        daemon = next(d for d in self.daemons if d.name == name)
        daemon.proc.kill()
        daemon.proc.wait()
        self.daemons.remove(daemon)
        self.status_file(name).unlink(missing_ok=True)  # its last status is stale now

    def restart(self, name: str, args: tuple) -> None:
        """Start ``name`` again with ``args`` (its log goes on in the same file)."""
        self.start(name, *args)

    def args(self, name: str) -> tuple:
        """The arguments the daemon ``name`` was started with."""
        return next(d.args for d in self.daemons if d.name == name)

    def status_file(self, name: str) -> Path:
        """Where the daemon ``name`` writes its JSON status."""
        return self.status_dir / f"{name}.json"

    def stored(self, name: str) -> int:
        """Records in reader ``name``'s incoming spool (0 before it made the spool)."""
        path = self.workdir / "incoming" / name
        return IncomingSpool(path).count() if path.exists() else 0

    def status(self, name: str) -> dict:
        """The daemon's latest status, or ``{}`` until it has written a readable one."""
        try:
            return json.loads(self.status_file(name).read_text())
        except (OSError, ValueError):
            return {}

    def check_alive(self) -> None:
        """Raise :class:`DemoError`, with the last line of its log, if any daemon has exited."""
        for d in self.daemons:
            if d.proc.poll() is not None:
                tail = d.log.read_text(errors="replace").strip().splitlines()[-1:] if d.log.exists() else []
                raise DemoError(f"{d.name} exited with code {d.proc.returncode} ({' '.join(tail) or 'no output'}); "
                                f"see {d.log}")

    def start_broker(self) -> tuple[str, int]:
        """Start a private ActiveMQ on free loopback ports in ``broker/``; returns its STOMP (host, port)."""
        base = self.workdir / "broker"
        stomp_port, openwire_port = free_port(), free_port()
        self.private_broker = base  # set first: an interrupted start still gets stopped
        result = subprocess.run(zmqsec_command("broker", "start", "--dir", base, "--stomp-port", stomp_port,
                                        "--openwire-port", openwire_port), capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise DemoError(f"could not start ActiveMQ in {base}: {reason[0]}")
        return "127.0.0.1", stomp_port

    def stop(self) -> None:
        """SIGTERM every daemon (each finishes cleanly and writes its last status), then the private broker."""
        for d in reversed(self.daemons):
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for d in reversed(self.daemons):
            try:
                d.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        if self.private_broker is not None:
            subprocess.run(zmqsec_command("broker", "stop", "--dir", self.private_broker), capture_output=True)
