"""Many reader certificates, fast: a few shared RSA key pairs, an EC CA, files on tmpfs when there is one.

Each certificate is still its own CMS recipient (its own issuer and serial number); sharing
key pairs only spares the set-up thousands of RSA key generations.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from keys.ca import CertificateAuthority, KeyType, Role
from keys.dn import parse_slash_dn
from keys.registry import ReaderRegistry

SHARED_KEYS = 3


def scratch() -> Path:
    """A fresh directory, on tmpfs when the machine has one (a CA fsyncs every certificate it issues)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="zmqsec-scale-", dir=base))


def make_site(base: Path, readers: int, *, materialize: int = 0) -> dict:
    """A CA, a publisher, ``readers`` registered reader certificates; the first ``materialize`` readers
    also get certificate and key files, so that processes can run as them."""
    ca = CertificateAuthority.init(base / "ca", subject=parse_slash_dn("/O=zmqsec scale/CN=Scale CA"), key_type=KeyType.EC)
    publisher = ca.issue(role=Role.PUBLISHER, cn="publisher.example.org", out_dir=base / "certs")
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(SHARED_KEYS)]
    registry = ReaderRegistry(base / "readers.d")
    named = {}
    for i in range(readers):
        issued = ca.issue(role=Role.READER, cn=f"reader{i:05d}.example.org", key=keys[i % SHARED_KEYS])
        registry.add(issued.certificate)
        if i < materialize:
            named[f"reader{i:05d}"] = (str(issued.cert_path), str(issued.key_path))
    site = {"dir": str(base), "trust_dir": str(ca.trust_dir), "registry": str(base / "readers.d"),
            "publisher": [str(publisher.cert_path), str(publisher.key_path)], "readers": named,
            "publisher_dn": "/O=zmqsec scale/CN=publisher.example.org"}
    (base / "site.json").write_text(json.dumps(site))
    return site
