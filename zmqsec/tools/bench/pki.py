"""A throw-away PKI for one run: a CA, a publisher, readers sharing a few key pairs, a bridge and a server."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from zmqsec.keys.ca import CertificateAuthority, Role, generate_key
from zmqsec.keys.dn import parse_slash_dn, slash_dn
from zmqsec.keys.pemfiles import load_private_key, write_private_key

SHARED_READER_KEYS = 4  # reader certificates share these key pairs; each is still its own CMS recipient


@dataclass(frozen=True)
class Pki:
    """Certificate and key files of one run (paths, so worker processes can load them)."""

    directory: Path
    ca_dir: Path
    trust_dir: Path
    publisher_cert: Path
    publisher_key: Path
    publisher_dn: str
    reader_certs: tuple[Path, ...]
    reader_keys: tuple[Path, ...]  # reader i uses reader_keys[i % len(reader_keys)]
    bridge_cert: Path
    bridge_key: Path
    server_cert: Path
    server_key: Path

    def reader(self, i: int) -> tuple[Path, Path]:
        """Reader ``i``'s certificate and (shared) private key files."""
        return self.reader_certs[i], self.reader_keys[i % len(self.reader_keys)]

    def registry(self, readers: int, name: str) -> Path:
        """A registry directory holding the first ``readers`` reader certificates (hard links)."""
        path = self.directory / "registries" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for cert in self.reader_certs[:readers]:
            os.link(cert, path / cert.name)
        return path


def make_pki(directory: Path, readers: int) -> Pki:
    """Issue everything a run needs; reader certificates share a few RSA key pairs so set-up stays quick."""
    ca = CertificateAuthority.init(directory / "ca", subject=parse_slash_dn("/O=zmqsec bench/CN=zmqsec bench CA"),
                                   rsa_bits=2048)
    certs = directory / "certs"
    publisher = ca.issue(role=Role.PUBLISHER, cn="publisher.bench", out_dir=certs)
    bridge = ca.issue(role=Role.BRIDGE, cn="bridge.bench", out_dir=certs)
    server = ca.issue(role=Role.SERVER, cn="apel.bench", out_dir=certs)
    keys = []
    for k in range(SHARED_READER_KEYS):
        path = directory / "reader-keys" / f"shared-{k}.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_key(path, generate_key())
        keys.append(path)
    loaded = [load_private_key(p) for p in keys]
    reader_certs = []
    for i in range(readers):
        # issue() also writes a copy of the shared key beside each certificate; we use the shared files.
        issued = ca.issue(role=Role.READER, cn=f"reader-{i:05d}.bench", key=loaded[i % len(loaded)],
                          out_dir=directory / "readers")
        reader_certs.append(issued.cert_path)
    return Pki(directory, ca.directory, ca.trust_dir, publisher.cert_path, publisher.key_path, slash_dn(publisher.certificate.subject),
               tuple(reader_certs), tuple(keys), bridge.cert_path, bridge.key_path, server.cert_path,
               server.key_path)
