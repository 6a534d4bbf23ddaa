"""``zmqsec keys ...``: thin commands over the trust layer.

Each function parses nothing itself: argparse hands it the options, it calls
the library and prints one line per result.  Errors propagate as
:class:`keys.errors.ZmqsecError` for ``zmqsec.cli.main`` to report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from zmqsec.keys.ca import CertificateAuthority, KeyType, Role, find_issued
from zmqsec.keys.dn import DnAllowList, parse_slash_dn, slash_dn
from zmqsec.keys.errors import KeyMismatch
from zmqsec.keys.hashdir import rehash
from zmqsec.keys.pemfiles import load_certificate, load_certificates, load_private_key, public_key_der
from zmqsec.keys.registry import ReaderRegistry
from zmqsec.keys.trust import CrlPolicy, TrustStore, Usage


def _dn(text: str) -> x509.Name:
    try:
        return parse_slash_dn(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_init_ca(args) -> int:
    """``keys init-ca DIR``: create a local CA, its CRL and its hashed trust directory."""
    ca = CertificateAuthority.init(
        args.dir, subject=args.subject, key_type=KeyType(args.key_type), rsa_bits=args.rsa_bits,
        days=args.days, crl_days=args.crl_days)
    print(f"created CA {slash_dn(ca.certificate.subject)} in {ca.directory}")
    print(f"trust directory: {ca.trust_dir}  (openssl verify -CApath {ca.trust_dir} -crl_check CERT)")
    return 0


def cmd_issue(args) -> int:
    """``keys issue``: issue a key and certificate for a role from the CA in ``--ca``."""
    ca = CertificateAuthority.open(args.ca)
    issued = ca.issue(role=Role(args.role), cn=args.cn, out_dir=args.out, key_type=KeyType(args.key_type),
                      subject=args.subject, sans=args.san, days=args.days)
    print(f"issued {args.role} {slash_dn(issued.certificate.subject)} serial {issued.certificate.serial_number:x}")
    print(f"certificate: {issued.cert_path}")
    print(f"key:         {issued.key_path} (mode 0600)")
    return 0


def cmd_revoke(args) -> int:
    """``keys revoke``: add a certificate (file or hex serial) to the CA's CRL and re-sign it."""
    ca = CertificateAuthority.open(args.ca)
    cert = find_issued(ca, args.cert)
    reason = x509.ReasonFlags[args.reason] if args.reason else None
    crl = ca.revoke(cert, reason=reason)
    print(f"revoked {slash_dn(cert.subject)} serial {cert.serial_number:x}; CRL now lists {len(list(crl))}, "
          f"valid until {crl.next_update_utc:%Y-%m-%d %H:%M:%SZ}")
    return 0


def cmd_crl(args) -> int:
    """``keys crl``: re-sign the CA's CRL for a new validity period."""
    crl = CertificateAuthority.open(args.ca).refresh_crl()
    print(f"CRL re-signed: {len(list(crl))} revoked, valid until {crl.next_update_utc:%Y-%m-%d %H:%M:%SZ}")
    return 0


def cmd_rehash(args) -> int:
    """``keys rehash DIR``: link certificates and CRLs to their OpenSSL hashed names, printing each link."""
    for link, target in rehash(args.dir):
        print(f"{link.name} -> {target.name}")
    return 0


def _validate_options(args) -> dict:
    options = {"crl": CrlPolicy(args.crl), "crl_all": args.crl_all}
    if getattr(args, "dn_list", None):
        options["allowed_dns"] = DnAllowList.load(args.dn_list)
    return options


def cmd_verify(args) -> int:
    """``keys verify CERT``: validate a certificate (and optionally its key) against a trust directory; print the chain."""
    trust = TrustStore.from_directory(args.trust)
    certs = load_certificates(args.cert)
    untrusted = list(certs[1:])
    for extra in args.untrusted or ():
        untrusted += load_certificates(extra)
    usage = Usage(args.usage) if args.usage else None
    chain = trust.validate(certs[0], usage=usage, untrusted=untrusted, **_validate_options(args))
    if args.key:
        if public_key_der(load_private_key(args.key)) != public_key_der(chain.leaf):
            raise KeyMismatch(f"{args.key}: private key does not match certificate {args.cert}")
    print(f"{args.cert}: OK {chain.subject_dn}")
    for depth, cert in enumerate(chain.certificates[1:], 1):
        print(f"  depth {depth}: {slash_dn(cert.subject)}")
    return 0


def _registry(args) -> ReaderRegistry:
    return ReaderRegistry(args.registry, args.dn_list)


def cmd_readers_add(args) -> int:
    """``keys readers add``: authorize reader certificates, validating each first when ``--trust`` is given."""
    registry = _registry(args)
    trust = TrustStore.from_directory(args.trust) if args.trust else None
    options = {"crl": CrlPolicy(args.crl)} if trust else {}
    for path in args.certs:
        reader = registry.add(load_certificate(path), trust, **options)
        print(f"added {reader.dn} ({reader.fingerprint[:16]}) as {reader.path}")
    return 0


def cmd_readers_remove(args) -> int:
    """``keys readers remove``: revoke read access by DN, fingerprint or file name."""
    for reader in _registry(args).remove(args.selector):
        print(f"removed {reader.dn} ({reader.fingerprint[:16]})")
    return 0


def cmd_readers_list(args) -> int:
    """``keys readers list``: print the authorized readers, then the refused entries and why."""
    trust = TrustStore.from_directory(args.trust) if args.trust else None
    options = {"crl": CrlPolicy(args.crl)} if trust else {}
    readers = _registry(args).load(trust, **options)
    for reader in readers:
        cert = reader.certificate
        print(f"{reader.fingerprint[:16]}  {reader.dn}  expires {cert.not_valid_after_utc:%Y-%m-%d}")
    for refusal in readers.refused:
        print(f"REFUSED [{refusal.reason}] {refusal.message}")
    print(f"{len(readers)} authorized, {len(readers.refused)} refused")
    return 0


def register(subparsers) -> None:
    """Add the ``keys`` command tree to the top-level parser."""
    keys = subparsers.add_parser("keys", help="certificate authority, reader registry and validation")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-ca", help="create a local CA with its CRL and hashed trust directory")
    p.add_argument("dir", type=Path)
    p.add_argument("--subject", type=_dn, help="CA subject, e.g. '/C=UK/O=Example Grid/CN=Example CA'")
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa")
    p.add_argument("--rsa-bits", type=int, default=3072)
    p.add_argument("--days", type=int, default=3650, help="CA certificate lifetime")
    p.add_argument("--crl-days", type=int, default=30, help="CRL validity period (refresh with `keys crl`)")
    p.set_defaults(func=cmd_init_ca)

    p = sub.add_parser("issue", help="issue a key and certificate for a role")
    p.add_argument("--ca", required=True, type=Path)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--cn", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--key-type", choices=[k.value for k in KeyType], default="rsa")
    p.add_argument("--subject", type=_dn, help="full subject DN instead of the CA's with CN replaced")
    p.add_argument("--san", action="append", default=[], help="DNS name or IP address (repeatable)")
    p.add_argument("--days", type=int, default=395)
    p.set_defaults(func=cmd_issue)

    p = sub.add_parser("revoke", help="revoke a certificate: add it to the CA's CRL")
    p.add_argument("--ca", required=True, type=Path)
    p.add_argument("cert", help="certificate file, or serial number (hex) of one this CA issued")
    p.add_argument("--reason", choices=[r.name for r in x509.ReasonFlags if r.name not in ("unspecified", "remove_from_crl")])
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("crl", help="re-sign the CA's CRL for a new validity period")
    p.add_argument("--ca", required=True, type=Path)
    p.set_defaults(func=cmd_crl)

    p = sub.add_parser("rehash", help="link *.pem/*.crl in a directory to OpenSSL hashed names")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_rehash)

    def crl_options(p, default="require"):
        p.add_argument("--crl", choices=[c.value for c in CrlPolicy], default=default,
                       help=f"CRL checking (default {default}, as openssl -crl_check)")

    p = sub.add_parser("verify", help="validate a certificate against a trust directory")
    p.add_argument("cert", type=Path)
    p.add_argument("--trust", required=True, type=Path, help="hashed CA directory, e.g. /etc/grid-security/certificates")
    p.add_argument("--usage", choices=[u.value for u in Usage])
    p.add_argument("--untrusted", action="append", type=Path, help="file of intermediate certificates")
    p.add_argument("--dn-list", type=Path, help="SSM-style file of allowed DNs")
    p.add_argument("--key", type=Path, help="also check that this private key matches")
    p.add_argument("--crl-all", action="store_true", help="check CRLs along the whole chain")
    crl_options(p)
    p.set_defaults(func=cmd_verify)

    readers = sub.add_parser("readers", help="the registry of certificates authorized to read a stream")
    readers.add_argument("--registry", required=True, type=Path, help="directory of reader certificates")
    readers.add_argument("--dn-list", type=Path, help="SSM-style DN allow-list narrowing the registry")
    rsub = readers.add_subparsers(dest="readers_command", required=True, metavar="COMMAND")
    p = rsub.add_parser("add", help="authorize reader certificates")
    p.add_argument("certs", nargs="+", type=Path)
    p.add_argument("--trust", type=Path, help="validate against this CA directory first")
    crl_options(p)
    p.set_defaults(func=cmd_readers_add)
    p = rsub.add_parser("remove", help="revoke read access: by DN, fingerprint or file name")
    p.add_argument("selector")
    p.set_defaults(func=cmd_readers_remove)
    p = rsub.add_parser("list", help="list authorized readers (and refused entries)")
    p.add_argument("--trust", type=Path, help="also validate each certificate")
    crl_options(p)
    p.set_defaults(func=cmd_readers_list)

