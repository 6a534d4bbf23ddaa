"""The openssl CLI as an independent peer: a CA made with ``openssl req``/``openssl ca``,
and ``openssl verify`` verdicts to hold our validator to.

Nothing here uses zmqsec code, so agreement between the two is evidence, not
an echo.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"

_CONF = """\
[ ca ]
default_ca = this_ca

[ this_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = {crl_days}
policy = any_policy
unique_subject = no
copy_extensions = none
email_in_dn = yes

[ any_policy ]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional
domainComponent = optional
localityName = optional

[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused

[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ v3_intermediate ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ v3_sign ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = emailProtection, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_encrypt ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyEncipherment
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_host ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_not_ca ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def run(*args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    """``openssl ARGS``, output captured; AssertionError with openssl's stderr if it fails and ``check``."""
    result = subprocess.run([OPENSSL, *args], capture_output=True, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result


@dataclass
class Verdict:
    """What ``openssl verify`` said: success, the first X509_V_ERR_* number, and its whole output."""

    ok: bool
    error: int | None  # OpenSSL X509_V_ERR_* number of the first error
    text: str


def verify(capath: Path, cert: Path, *, crl_check: bool = True, purpose: str | None = None,
           untrusted: Path | None = None, attime: int | None = None) -> Verdict:
    """``openssl verify -CApath`` and the first error it reports."""
    args = ["verify", "-CApath", str(capath)]
    if crl_check:
        args.append("-crl_check")
    if purpose:
        args += ["-purpose", purpose]
    if untrusted:
        args += ["-untrusted", str(untrusted)]
    if attime is not None:
        args += ["-attime", str(attime)]
    result = run(*args, str(cert), check=False)
    text = (result.stdout + result.stderr).decode(errors="replace")
    match = re.search(r"error (\d+) at \d+ depth lookup", text)
    return Verdict(result.returncode == 0, int(match.group(1)) if match else None, text)


def subject_hash(cert: Path) -> str:
    """``openssl x509 -hash``: the subject hash that names ``<hash>.0`` in a hashed directory."""
    return run("x509", "-in", str(cert), "-noout", "-hash").stdout.decode().strip()


def crl_hash(crl: Path) -> str:
    """``openssl crl -hash``: the issuer hash that names ``<hash>.r0``."""
    return run("crl", "-in", str(crl), "-noout", "-hash").stdout.decode().strip()


def compat_subject(cert: Path) -> str:
    """The subject as ``openssl x509 -subject -nameopt compat`` prints it (APEL SSM's slash form)."""
    out = run("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "compat").stdout.decode().strip()
    return out.removeprefix("subject=").strip()


class OpensslCA:
    """A CA driven entirely by the openssl CLI (``req -x509``, ``ca``, ``ca -gencrl``)."""

    def __init__(self, directory: Path, subject: str, *, parent: "OpensslCA | None" = None,
                 crl_days: int = 30, key: str = "rsa:2048") -> None:
        """A root CA (``req -x509``) in ``directory``, or an intermediate signed by ``parent``; ``key`` as for ``req -newkey``."""
        self.dir = directory
        self.subject = subject
        for sub in ("newcerts", "certs"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "crlnumber").write_text("01\n")
        (directory / "openssl.cnf").write_text(_CONF.format(dir=directory, crl_days=crl_days))
        self.key = directory / "ca.key"
        self.cert = directory / "ca.pem"
        if parent is None:
            run("req", "-x509", "-newkey", key, "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
                "-subj", subject, "-days", "3650", "-config", str(self.conf), "-extensions", "v3_root")
        else:
            csr = directory / "ca.csr"
            run("req", "-new", "-newkey", key, "-nodes", "-keyout", str(self.key), "-out", str(csr),
                "-subj", subject, "-config", str(self.conf))
            parent.sign(csr, self.cert, "v3_intermediate", days=3000)

    @classmethod
    def from_certificate(cls, directory: Path, subject: str, cert: Path, key: Path, *, like: "OpensslCA") -> "OpensslCA":
        """A CA that signs with an existing certificate and key (one that is not a CA, to see it refused),
        configured like ``like``."""
        ca = cls.__new__(cls)
        ca.dir, ca.subject = directory, subject
        for sub in ("newcerts", "certs"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("2000\n")
        (directory / "crlnumber").write_text("01\n")
        (directory / "openssl.cnf").write_text(like.conf.read_text().replace(str(like.dir), str(directory)))
        ca.key, ca.cert = directory / "ca.key", directory / "ca.pem"
        ca.key.write_bytes(key.read_bytes())
        ca.cert.write_bytes(cert.read_bytes())
        return ca

    @property
    def conf(self) -> Path:
        """This CA's ``openssl.cnf``."""
        return self.dir / "openssl.cnf"

    def sign(self, csr: Path, out: Path, extensions: str, *, days: int = 365,
             startdate: str | None = None, enddate: str | None = None) -> Path:
        """``openssl ca`` signs ``csr`` into ``out`` with the ``extensions`` section; dates as YYYYMMDDHHMMSSZ."""
        args = ["ca", "-batch", "-config", str(self.conf), "-extensions", extensions, "-extfile", str(self.conf),
                "-in", str(csr), "-out", str(out), "-notext"]
        if startdate:
            args += ["-startdate", startdate]
        if enddate:
            args += ["-enddate", enddate]
        if not (startdate or enddate):
            args += ["-days", str(days)]
        run(*args)
        return out

    def issue(self, name: str, cn: str, extensions: str = "v3_sign", **dates) -> Path:
        """Key and certificate ``certs/<name>.pem`` / ``.key``; dates as YYYYMMDDHHMMSSZ."""
        key = self.dir / "certs" / f"{name}.key"
        csr = self.dir / "certs" / f"{name}.csr"
        base = self.subject.rsplit("/CN=", 1)[0]
        run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"{base}/CN={cn}", "-config", str(self.conf))
        return self.sign(csr, self.dir / "certs" / f"{name}.pem", extensions, **dates)

    def revoke(self, cert: Path) -> None:
        """``openssl ca -revoke``: record ``cert`` as revoked in the CA database (the next CRL lists it)."""
        run("ca", "-config", str(self.conf), "-revoke", str(cert))

    def gencrl(self, out: Path | None = None, *, crl_hours: int | None = None) -> Path:
        """``openssl ca -gencrl`` into ``out`` (``crl.pem`` by default), valid ``crl_hours`` when given."""
        out = out or self.dir / "crl.pem"
        args = ["ca", "-config", str(self.conf), "-gencrl", "-out", str(out)]
        if crl_hours is not None:
            args += ["-crlhours", str(crl_hours)]
        run(*args)
        return out


def install(capath: Path, *files: Path) -> None:
    """Copy CA certificates/CRLs into ``capath`` and build hashed links with ``openssl rehash``."""
    capath.mkdir(parents=True, exist_ok=True)
    for f in files:
        (capath / f"{f.parent.name}-{f.name}").write_bytes(f.read_bytes())
    run("rehash", str(capath))
