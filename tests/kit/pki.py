"""The one way the tests make PKI: CAs, named credentials, stream sites, and thousands of readers fast.

Everything is issued by zmqsec's own CA code (``zmqsec.keys.ca``); CAs made by the openssl CLI, to hold
that code to an independent peer, are in :mod:`kit.opensslpeer`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from zmqsec.keys.ca import CertificateAuthority, Issued, KeyType, Role
from zmqsec.keys.dn import parse_slash_dn, slash_dn
from zmqsec.keys.pemfiles import Credential, load_certificate, load_private_key
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import TrustStore

TEST_CA = "/O=zmqsec test/CN=Test CA"
SITE_JSON = "site.json"


def new_ca(directory: str | os.PathLike, subject: str | None = TEST_CA, *, key_type: KeyType = KeyType.RSA) -> CertificateAuthority:
    """A fresh CA in ``directory``: RSA 2048 (quicker to make than the production default of 3072) or EC P-256.

    ``subject`` is a slash-form DN; None takes the library's default subject."""
    return CertificateAuthority.init(directory, subject=parse_slash_dn(subject) if subject else None,
                                     key_type=key_type, rsa_bits=2048)


def shared_rsa_keys(count: int = 3) -> list[rsa.RSAPrivateKey]:
    """A few RSA 2048 key pairs for many certificates to share: each certificate is still its own CMS recipient
    (its own issuer and serial number), and set-up is spared thousands of key generations."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(count)]


@dataclass
class Pki:
    """A CA and the certificates it issued, by name, with their files under ``dir``.

    ``pki["portal"]`` is portal's :class:`Credential`; ``pki.certs["portal"]`` its :class:`Issued` (certificate,
    key and the paths of their files).  Names passed to :meth:`register` are also in the reader registry
    ``dir/readers.d``, in ``readers``: the Pki is then a stream site, as :mod:`kit.daemons` runs it.
    A Pki read back with :meth:`load` (in a driver process) has no CA key: ``ca`` is None.
    """

    dir: Path
    trust_dir: Path
    ca: CertificateAuthority | None = None
    certs: dict[str, Issued] = field(default_factory=dict)
    readers: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, directory: str | os.PathLike, subject: str | None = TEST_CA, *, key_type: KeyType = KeyType.RSA,
               **roles: Role) -> "Pki":
        """A new CA (:func:`new_ca`) in ``directory/ca`` and, for each ``name=Role``, a certificate for
        ``CN=<name>.example.org`` under the CA's organisation."""
        directory = Path(directory)
        return cls.under(new_ca(directory / "ca", subject, key_type=key_type), directory, **roles)

    @classmethod
    def under(cls, ca: CertificateAuthority, directory: str | os.PathLike, **roles: Role) -> "Pki":
        """Certificates from an existing CA (the broker's, say), their files in ``directory``; ``name=Role`` as in :meth:`create`."""
        pki = cls(Path(directory), ca.trust_dir, ca)
        for name, role in roles.items():
            pki.issue(name, role)
        return pki

    def issue(self, name: str, role: Role, *, cn: str | None = None, **options) -> Issued:
        """Issue ``name``'s certificate (``cn`` defaults to ``<name>.example.org``) into ``dir/certs``;
        ``options`` go to :meth:`CertificateAuthority.issue` (``key=``, ``key_type=``, ``not_after=``, ...)."""
        self.certs[name] = self.ca.issue(role=role, cn=cn or f"{name}.example.org", out_dir=self.dir / "certs", **options)
        self.__dict__.pop("_credentials", None)
        return self.certs[name]

    def issue_shared(self, prefix: str, count: int, role: Role = Role.READER, *, shared_keys: int = 3,
                     digits: int = 5, register: bool = False, keep: int | None = None) -> list[Issued]:
        """``count`` certificates ``<prefix><i>.example.org`` over ``shared_keys`` key pairs (:func:`shared_rsa_keys`),
        written where the CA keeps what it issued.  With ``register`` each goes into the reader registry; the first
        ``keep`` (all when None) are also kept by name, with their files, for processes to run as them."""
        keys = shared_rsa_keys(shared_keys)
        registry = self.registry if register else None
        issued = []
        for i in range(count):
            name = f"{prefix}{i:0{digits}d}"
            one = self.ca.issue(role=role, cn=f"{name}.example.org", key=keys[i % shared_keys])
            issued.append(one)
            if registry is not None:
                registry.add(one.certificate)
            if keep is None or i < keep:
                self.certs[name] = one
                if register:
                    self.readers.append(name)
        self.__dict__.pop("_credentials", None)
        return issued

    @cached_property
    def _credentials(self) -> dict[str, Credential]:
        """A :class:`Credential` for each certificate, made once (forgotten when another is issued)."""
        return {name: Credential(issued.certificate, issued.key) for name, issued in self.certs.items()}

    def __getitem__(self, name: str) -> Credential:
        """``name``'s certificate and private key, as a :class:`Credential` (the same object each time)."""
        return self._credentials[name]

    @cached_property
    def trust(self) -> TrustStore:
        """The CA's trust directory, loaded once (a later revocation needs a fresh :class:`TrustStore`)."""
        return TrustStore.from_directory(self.trust_dir)

    def dn(self, name: str) -> str:
        """``name``'s subject in slash form, as openssl and APEL SSM print it."""
        return slash_dn(self.certs[name].certificate.subject)

    @property
    def publisher_dn(self) -> str:
        """The subject of the certificate named ``publisher``: what readers are told to accept."""
        return self.dn("publisher")

    # -- the stream site ------------------------------------------------------------------------

    @property
    def registry_dir(self) -> Path:
        """The reader registry the site's publisher reads: ``dir/readers.d``."""
        return self.dir / "readers.d"

    @property
    def registry(self) -> ReaderRegistry:
        """The reader registry, for adding and removing readers in-process."""
        return ReaderRegistry(self.registry_dir)

    def register(self, *names: str) -> "Pki":
        """Add the named certificates to the reader registry; returns the Pki, now a site with these readers."""
        registry = self.registry
        for name in names:
            registry.add(self.certs[name].certificate)
            self.readers.append(name)
        return self

    def save(self) -> Path:
        """Write ``dir/site.json`` (paths only, no key material) for :meth:`load` in another process."""
        path = self.dir / SITE_JSON
        path.write_text(json.dumps({
            "dir": str(self.dir), "trust_dir": str(self.trust_dir), "readers": self.readers,
            "certs": {name: [str(c.cert_path), str(c.key_path)] for name, c in self.certs.items()}}))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Pki":
        """The site :meth:`save` wrote in ``directory``, its certificates and keys read from their files (no CA key)."""
        raw = json.loads((Path(directory) / SITE_JSON).read_text())
        certs = {name: Issued(load_certificate(cert), load_private_key(key), Path(cert), Path(key))
                 for name, (cert, key) in raw["certs"].items()}
        return cls(Path(raw["dir"]), Path(raw["trust_dir"]), None, certs, list(raw["readers"]))


def stream_site(directory: str | os.PathLike, readers=("portal", "dashboard", "central", "latecomer"),
                subject: str = "/O=zmqsec test/CN=Site CA") -> Pki:
    """A CA, a publisher (``publisher.example.org``) and ``readers``, all registered: what the stream's daemons run on."""
    site = Pki.create(directory, subject, publisher=Role.PUBLISHER, **{name: Role.READER for name in readers})
    return site.register(*readers)


def scratch_dir() -> Path:
    """A fresh directory, on tmpfs when the machine has one (a CA fsyncs every certificate it issues); the caller removes it."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="zmqsec-scale-", dir=base))


def scale_site(directory: str | os.PathLike, readers: int, *, materialize: int = 0) -> Pki:
    """An EC CA, a publisher and ``readers`` registered readers ``reader00000`` ... over three shared key pairs;
    the first ``materialize`` are kept by name, so that processes can run as them.  Saved for :meth:`Pki.load`."""
    site = Pki.create(directory, "/O=zmqsec scale/CN=Scale CA", key_type=KeyType.EC, publisher=Role.PUBLISHER)
    site.issue_shared("reader", readers, register=True, keep=materialize)
    site.save()
    return site


def self_signed(subject: x509.Name, extensions=()) -> Credential:
    """A self-signed certificate with ``subject`` (a look-alike of a real one when given its subject), valid now."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1)))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return Credential(builder.sign(key, hashes.SHA256()), key)
