"""A private ActiveMQ instance on loopback, for the test command and the demo.

Debian's ``activemq`` package ships the broker jars; this module writes an
``activemq.xml`` into a directory of our own (data, logs and TLS stores stay
there), starts the JVM directly as the current user, waits until the STOMP
port accepts connections, and stops it (SIGTERM, then SIGKILL) -- or kills it
outright, for crash tests.  ``broker.json`` in the directory records what was
started so that tests and the demo can find the ports and TLS files.

Connectors: OpenWire, STOMP, and (when TLS material is given) STOMP+SSL that
requires a client certificate issued by the given CA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from zmqsec.errors import ZmqsecError

ACTIVEMQ_HOME = Path("/usr/share/activemq")
JVM_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
]


class BrokerError(ZmqsecError):
    """The local ActiveMQ could not be configured, started or stopped."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how a local broker listens.  Every port is on ``host`` (loopback)."""

    base: Path
    host: str = "127.0.0.1"
    openwire_port: int = 61616
    stomp_ports: tuple[int, ...] = (61613,)
    stomp_ssl_port: int | None = None
    keystore: Path | None = None  # PKCS#12 with the broker's key and certificate
    truststore: Path | None = None  # PKCS#12 with the CA(s) that issue client certificates
    store_password: str = "zmqsec-broker"
    heap_mb: int = 256
    users: tuple[tuple[str, str], ...] = ()  # (login, passcode): when set, connections must authenticate

    @property
    def pid_file(self) -> Path:
        """Where the JVM's process id is recorded while it runs."""
        return self.base / "broker.pid"

    @property
    def state_file(self) -> Path:
        """``broker.json``: this configuration, for :meth:`LocalBroker.from_directory` to find the broker again."""
        return self.base / "broker.json"

    def activemq_xml(self) -> str:
        """The broker's ``activemq.xml``; raises :class:`BrokerError` for a STOMP+SSL port without key and trust stores."""
        data = self.base / "data"
        connectors = [f'<transportConnector name="openwire" uri="tcp://{self.host}:{self.openwire_port}"/>']
        for i, port in enumerate(self.stomp_ports):
            connectors.append(
                f'<transportConnector name="stomp{i}" uri="stomp://{self.host}:{port}?transport.hbGracePeriodMultiplier=2.0"/>')
        ssl_context = ""
        if self.stomp_ssl_port:
            if not (self.keystore and self.truststore):
                raise BrokerError("a STOMP+SSL connector needs keystore and truststore")
            connectors.append(
                f'<transportConnector name="stomp+ssl" uri="stomp+ssl://{self.host}:{self.stomp_ssl_port}?needClientAuth=true"/>')
            ssl_context = (
                "<sslContext><sslContext"
                f" keyStore={quoteattr('file:' + str(self.keystore))} keyStorePassword={quoteattr(self.store_password)} keyStoreType=\"PKCS12\""
                f" trustStore={quoteattr('file:' + str(self.truststore))} trustStorePassword={quoteattr(self.store_password)} trustStoreType=\"PKCS12\""
                "/></sslContext>"
            )
        plugins = ""
        if self.users:
            entries = "".join(f"<authenticationUser username={quoteattr(u)} password={quoteattr(p)} groups=\"users\"/>"
                              for u, p in self.users)
            plugins = f"<plugins><simpleAuthenticationPlugin><users>{entries}</users></simpleAuthenticationPlugin></plugins>"
        return f"""<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="zmqsec"
          persistent="true" dataDirectory={quoteattr(str(data))}>
    <persistenceAdapter><kahaDB directory={quoteattr(str(data / 'kahadb'))}/></persistenceAdapter>
    {plugins}
    {ssl_context}
    <transportConnectors>
      {chr(10).join('      ' + c for c in connectors).strip()}
    </transportConnectors>
  </broker>
</beans>
"""


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        return state != "Z"
    except (OSError, IndexError):
        return True


class LocalBroker:
    """Start, stop and kill one broker instance described by a :class:`BrokerConfig`."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config

    @classmethod
    def from_directory(cls, base: str | os.PathLike) -> "LocalBroker":
        """The broker started earlier in ``base``, from its ``broker.json``; raises :class:`BrokerError` if there is none."""
        state = Path(base) / "broker.json"
        try:
            raw = json.loads(state.read_text())
        except (OSError, ValueError):
            raise BrokerError(f"{state}: no broker state here; start one with `zmqsec broker start --dir {base}`") from None
        for key in ("base", "keystore", "truststore"):
            if raw.get(key):
                raw[key] = Path(raw[key])
        raw["stomp_ports"] = tuple(raw["stomp_ports"])
        raw["users"] = tuple(tuple(u) for u in raw.get("users", ()))
        return cls(BrokerConfig(**raw))

    def pid(self) -> int | None:
        """The broker's process id, or None if it is not running."""
        try:
            pid = int(self.config.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        """Whether the broker process is alive (not whether it accepts connections yet)."""
        return self.pid() is not None

    def ready(self) -> bool:
        """Whether every plain STOMP port accepts a connection (the STOMP+SSL port is not checked)."""
        return all(_port_open(self.config.host, p) for p in self.config.stomp_ports)

    def start(self, timeout: float = 90.0) -> int:
        """Start the JVM (if not already running) and wait until every STOMP port answers."""
        cfg = self.config
        if not (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists():
            raise BrokerError(f"{ACTIVEMQ_HOME}/bin/activemq.jar missing; install Debian's activemq package (apt-get install activemq)")
        java = shutil.which("java")
        if java is None:
            raise BrokerError("no java on PATH; install a JRE (apt-get install default-jre-headless)")
        pid = self.pid()
        if pid is None:
            for port in (cfg.openwire_port, *cfg.stomp_ports, *([cfg.stomp_ssl_port] if cfg.stomp_ssl_port else [])):
                if _port_open(cfg.host, port):
                    raise BrokerError(f"port {cfg.host}:{port} is already in use; stop what listens there or choose other ports")
            conf = cfg.base / "conf"
            for d in (conf, cfg.base / "data", cfg.base / "tmp"):
                d.mkdir(parents=True, exist_ok=True)
            (conf / "activemq.xml").write_text(cfg.activemq_xml())
            (conf / "log4j.properties").write_text(
                "log4j.rootLogger=INFO, file\n"
                "log4j.appender.file=org.apache.log4j.FileAppender\n"
                f"log4j.appender.file.File={cfg.base / 'data' / 'activemq.log'}\n"
                "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
                "log4j.appender.file.layout.ConversionPattern=%d %-5p [%c{1}] %m%n\n")
            state = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
            cfg.state_file.write_text(json.dumps(state, indent=2))
            cmd = [
                java, f"-Xms{cfg.heap_mb // 2}M", f"-Xmx{cfg.heap_mb}M", "-Djava.awt.headless=true",
                f"-Djava.io.tmpdir={cfg.base / 'tmp'}", *JVM_OPENS,
                f"-Dactivemq.classpath={conf}", f"-Dactivemq.home={ACTIVEMQ_HOME}", f"-Dactivemq.base={cfg.base}",
                f"-Dactivemq.conf={conf}", f"-Dactivemq.data={cfg.base / 'data'}",
                f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
                "-jar", str(ACTIVEMQ_HOME / "bin" / "activemq.jar"), "start", f"xbean:file:{conf / 'activemq.xml'}",
            ]
            with open(cfg.base / "console.log", "ab") as console:
                proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            cfg.pid_file.write_text(f"{proc.pid}\n")
            pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise BrokerError(f"ActiveMQ exited during start-up; see {cfg.base / 'console.log'}")
            if self.ready() and (not cfg.stomp_ssl_port or _port_open(cfg.host, cfg.stomp_ssl_port)):
                return pid
            time.sleep(0.2)
        raise BrokerError(f"ActiveMQ did not open its STOMP port within {timeout:.0f}s; see {cfg.base / 'console.log'}")

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``.  Returns whether a broker was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self._reap(pid)
        return True

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._reap(pid)

    def _reap(self, pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                if not _pid_alive(pid):
                    break
            time.sleep(0.1)
        self.config.pid_file.unlink(missing_ok=True)


def make_tls_stores(base: Path, ca_dir: Path, password: str) -> tuple[Path, Path]:
    """Issue the broker's server certificate from the CA in ``ca_dir``; write PKCS#12 key and trust stores.

    The truststore is written by the JRE's own ``keytool`` so that Java marks
    the CA as a trusted entry (a set-up step, not per-message crypto).
    """
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
    from zmqsec.keys.ca import CertificateAuthority, Role

    ca = CertificateAuthority.open(ca_dir)
    tls = base / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    issued = ca.issue(role=Role.SERVER, cn="localhost", out_dir=tls, sans=["localhost", "127.0.0.1"])
    keystore = tls / "broker.p12"
    fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the broker's key: 0600 from birth
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)
        fh.write(pkcs12.serialize_key_and_certificates(
            b"broker", issued.key, issued.certificate, [ca.certificate], BestAvailableEncryption(password.encode())))
    truststore = tls / "trust.p12"
    truststore.unlink(missing_ok=True)
    keytool = shutil.which("keytool")
    if keytool is None:
        raise BrokerError("keytool not found; install a JRE (apt-get install default-jre-headless)")
    result = subprocess.run(
        [keytool, "-importcert", "-noprompt", "-alias", "zmqsec-ca", "-file", str(ca_dir / "ca.pem"),
         "-keystore", str(truststore), "-storetype", "PKCS12", "-storepass", password],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"keytool could not write {truststore}: {result.stderr.strip() or result.stdout.strip()}")
    return keystore, truststore


def cmd_start(args) -> int:
    """``zmqsec broker start``: start a broker in ``--dir``, with TLS stores from ``--tls-ca`` when given."""
    if args.stomp_ssl_port and not args.tls_ca:
        print("zmqsec broker start: --stomp-ssl-port needs --tls-ca (the CA that issues the broker's TLS "
              "certificate and the clients')", file=sys.stderr)
        return 2
    base = args.dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    keystore = truststore = None
    if args.tls_ca:
        keystore, truststore = make_tls_stores(base, args.tls_ca.resolve(), "zmqsec-broker")
    config = BrokerConfig(base=base, openwire_port=args.openwire_port, stomp_ports=tuple(args.stomp_port or [61613]),
                          stomp_ssl_port=(args.stomp_ssl_port or 61614) if args.tls_ca else None,
                          keystore=keystore, truststore=truststore)
    pid = LocalBroker(config).start(timeout=args.timeout)
    ports = ", ".join(str(p) for p in config.stomp_ports)
    ssl = f", stomp+ssl {config.stomp_ssl_port}" if config.stomp_ssl_port else ""
    print(f"ActiveMQ running (pid {pid}) in {base}: stomp {ports}{ssl}, openwire {config.openwire_port}")
    return 0


def cmd_stop(args) -> int:
    """``zmqsec broker stop``: stop the broker started in ``--dir``, if it is running."""
    broker = LocalBroker.from_directory(args.dir.resolve())
    print("ActiveMQ stopped" if broker.stop() else "ActiveMQ was not running")
    return 0


def cmd_status(args) -> int:
    """``zmqsec broker status``: print whether the broker in ``--dir`` runs; exit status 1 if it does not."""
    broker = LocalBroker.from_directory(args.dir.resolve())
    pid = broker.pid()
    print(f"ActiveMQ pid {pid}, STOMP {'ready' if broker.ready() else 'not answering'}" if pid else "ActiveMQ not running")
    return 0 if pid else 1


def register(subparsers) -> None:
    """Add the ``broker`` command tree to the top-level parser."""
    broker = subparsers.add_parser("broker", help="run a private ActiveMQ on loopback (tests, demo)")
    sub = broker.add_subparsers(dest="broker_command", required=True, metavar="COMMAND")
    p = sub.add_parser("start", help="start a broker with its data in DIR")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--openwire-port", type=int, default=61616)
    p.add_argument("--stomp-port", type=int, action="append", help="STOMP port (repeat for several connectors)")
    p.add_argument("--stomp-ssl-port", type=int, help="STOMP+SSL port (with --tls-ca; default 61614)")
    p.add_argument("--tls-ca", type=Path, help="CA directory: issue the broker a TLS certificate and require client certificates from it")
    p.add_argument("--timeout", type=float, default=90.0)
    p.set_defaults(func=cmd_start)
    for name, func, text in (("stop", cmd_stop, "stop the broker started in DIR"),
                             ("status", cmd_status, "is the broker in DIR running?")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", required=True, type=Path)
        p.set_defaults(func=func)
