"""``zmqsec demo``: a walk through zmqsec on local defaults, with no configuration.

It builds a throw-away CA and the certificates of a small deployment, grants
three readers, revokes one, and shows each verdict of the trust layer next to
the openssl command an operator can run to check it independently.  Every
file it makes stays in one directory it names at the end.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from keys.ca import CertificateAuthority, Role
from keys.dn import parse_slash_dn
from keys.errors import CertificateRejected
from keys.registry import ReaderRegistry
from keys.trust import TrustStore, Usage


def _say(step: str, text: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {step:<8} {text}", flush=True)


def _openssl_verdict(trust_dir: Path, cert: Path) -> str:
    result = subprocess.run(["openssl", "verify", "-CApath", str(trust_dir), "-crl_check", str(cert)],
                            capture_output=True, text=True)
    return "OK" if result.returncode == 0 else "refused"


def run(workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=False)
    ca = CertificateAuthority.init(workdir / "ca", subject=parse_slash_dn("/O=zmqsec demo/CN=zmqsec demo CA"), rsa_bits=2048)
    _say("ca", f"created {ca.directory} with hashed trust directory {ca.trust_dir}")
    certs = workdir / "certs"
    issued = {"publisher": ca.issue(role=Role.PUBLISHER, cn="publisher.demo", out_dir=certs)}
    for name in ("portal", "dashboard", "repository"):
        issued[name] = ca.issue(role=Role.READER, cn=f"{name}.demo", out_dir=certs)
        _say("issue", f"reader certificate {issued[name].cert_path} (key 0600)")
    registry = ReaderRegistry(workdir / "readers")
    trust = TrustStore.from_directory(ca.trust_dir)
    for name in ("portal", "dashboard", "repository"):
        reader = registry.add(issued[name].certificate, trust)
        _say("grant", f"{reader.dn} may read the stream")
    _say("readers", f"{len(registry.load(trust))} authorized")

    revoked = issued["dashboard"]
    ca.revoke(revoked.certificate)
    _say("revoke", f"{revoked.cert_path.name} added to the CRL")
    trust = TrustStore.from_directory(ca.trust_dir)
    snapshot = registry.load(trust)
    _say("readers", f"{len(snapshot)} authorized, refused: "
         + ", ".join(f"{r.path.name} [{r.reason}]" for r in snapshot.refused))

    print()
    print(f"{'certificate':<24} {'zmqsec':<32} openssl verify -crl_check")
    for name, item in issued.items():
        usage = Usage.SIGN if name == "publisher" else Usage.ENCRYPT
        try:
            trust.validate(item.certificate, usage=usage)
            ours = "OK"
        except CertificateRejected as exc:
            ours = f"refused [{exc.reason}]"
        print(f"{item.cert_path.name:<24} {ours:<32} {_openssl_verdict(ca.trust_dir, item.cert_path)}")
    print()
    _say("done", f"everything is in {workdir}")
    _say("try", f"openssl verify -CApath {ca.trust_dir} -crl_check {revoked.cert_path}")
    return 0


def cmd_demo(args) -> int:
    workdir = args.dir or Path(f"zmqsec-demo-{dt.datetime.now():%Y%m%d-%H%M%S}")
    return run(workdir.resolve())


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="walk through zmqsec on local defaults")
    p.add_argument("--dir", type=Path, help="where to put everything (default: ./zmqsec-demo-TIMESTAMP)")
    p.set_defaults(func=cmd_demo)
