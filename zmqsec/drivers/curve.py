"""Optional CurveZMQ on tcp links: keys from files, applied to sockets, and who may connect.

The end-to-end protection of the stream does not depend on this (docs/PROTOCOL.md §9):
CurveZMQ adds, per link, encryption of what the stream leaves visible (stream
names, sizes, recipients' issuer/serial numbers), and -- with a directory of
allowed client keys -- refuses connections from anyone else (libzmq's ZAP).

Key files are ZeroMQ's own certificate format (``zmq.auth``): ``NAME.key``
holds the public key, ``NAME.key_secret`` both; secret files are written 0600
and refused when group or others may read them, like every private key here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from zmqsec.keys.errors import KeyFileError
from zmqsec.keys.pemfiles import check_private_key_mode

from zmqsec.errors import ConfigError


@dataclass(frozen=True)
class CurveServer:
    """The binding side (publisher, relay output): its key pair, and optionally who may connect."""

    public: bytes
    secret: bytes
    clients: Path | None = None  # directory of allowed client public keys; None: any client that knows our key

    def __repr__(self) -> str:  # never show key material
        return f"CurveServer(public={self.public.decode()!r}, clients={self.clients})"


@dataclass(frozen=True)
class CurveClient:
    """The connecting side (reader, relay input): the server's public key and our own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"CurveClient(server_public={self.server_public.decode()!r}, public={self.public.decode()!r})"


def require_curve() -> None:
    """Raise :class:`KeyFileError` if the libzmq in use was built without CURVE support."""
    if not zmq.has("curve"):
        raise KeyFileError(f"libzmq {zmq.zmq_version()} was built without CURVE; transport security is unavailable")


def generate(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A new key pair: ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600)."""
    require_curve()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a ZeroMQ CURVE key file ({exc.__class__.__name__}: {exc})") from None
    if public is None or len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path}: not a ZeroMQ CURVE key file (keys must be 40 Z85 characters)")
    if want_secret and secret is None:
        raise KeyFileError(f"{path}: holds no secret key (give the NAME.key_secret file)")
    return public, secret


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """The (public, secret) Z85 key pair from a ``NAME.key_secret`` file that only its owner may read."""
    path = Path(path)
    public, secret = _load(path, want_secret=True)  # a public file given by mistake: say so, not "mode 0644"
    check_private_key_mode(path)
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    """The Z85 public key from a ``NAME.key`` (or ``NAME.key_secret``) file."""
    return _load(Path(path), want_secret=False)[0]


def server(secret_file: str | os.PathLike, clients: str | os.PathLike | None = None) -> CurveServer:
    """Our key pair from ``secret_file``, admitting only the public keys in the ``clients`` directory when given."""
    require_curve()
    public, secret = load_secret(secret_file)
    if clients is not None and not Path(clients).is_dir():
        raise KeyFileError(f"{clients}: allowed CURVE clients must be a directory of NAME.key files")
    return CurveServer(public, secret, Path(clients) if clients else None)


def client(server_public_file: str | os.PathLike, secret_file: str | os.PathLike | None = None) -> CurveClient:
    """Our key pair from ``secret_file``, or a fresh one for this run when the server admits any client."""
    require_curve()
    server_public = load_public(server_public_file)
    public, secret = load_secret(secret_file) if secret_file else zmq.curve_keypair()
    return CurveClient(server_public, public, secret)


def configured_server(secret_file, clients) -> CurveServer | None:
    """From the ``[curve]`` options of a binding daemon: None when CURVE is not configured."""
    if clients and not secret_file:
        raise ConfigError("[curve] clients (allowed client keys) needs our own secret key as well")
    return server(secret_file, clients) if secret_file else None


def configured_client(server_file, secret_file) -> CurveClient | None:
    """From the ``[curve]`` options of a connecting daemon: None when CURVE is not configured."""
    if secret_file and not server_file:
        raise ConfigError("[curve] secret key given without the server's public key")
    return client(server_file, secret_file) if server_file else None


_lock = threading.Lock()
_authenticators: dict[int, list] = {}  # id(context) -> [ThreadAuthenticator, clients directory, users]


def _admit_only(context: zmq.Context, clients: Path) -> Callable[[], None]:
    """libzmq has one ZAP handler per context: share it between the context's CURVE servers."""
    with _lock:
        entry = _authenticators.get(id(context))
        if entry is None:
            authenticator = ThreadAuthenticator(context)
            authenticator.start()
            authenticator.configure_curve(domain="*", location=str(clients))  # read once: restart to apply changes
            entry = _authenticators[id(context)] = [authenticator, clients, 0]
        elif entry[1] != clients:
            raise ConfigError(f"one process admits one directory of CURVE clients ({entry[1]}), not also {clients}")
        entry[2] += 1

    def release() -> None:
        with _lock:
            entry[2] -= 1
            if entry[2] == 0:
                entry[0].stop()
                _authenticators.pop(id(context), None)

    return release


def apply_server(socket: zmq.Socket, curve: CurveServer) -> Callable[[], None]:
    """Make ``socket`` a CURVE server (before it binds), admitting only the listed clients when there is a
    list.  Returns what to call when the socket closes."""
    release = _admit_only(socket.context, curve.clients) if curve.clients is not None else (lambda: None)
    socket.curve_secretkey = curve.secret
    socket.curve_publickey = curve.public
    socket.curve_server = True
    return release


def apply_client(socket: zmq.Socket, curve: CurveClient) -> None:
    """Make ``socket`` a CURVE client (before it connects)."""
    socket.curve_serverkey = curve.server_public
    socket.curve_secretkey = curve.secret
    socket.curve_publickey = curve.public
