"""Signatures by key type: the one place that knows RSA signs with PKCS#1 v1.5 and EC with ECDSA.

Used by CMS SignedData (announcements, S/MIME) and by the stream's checkpoints.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

HASHES = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class UnsupportedKey(ValueError):
    """The key is neither RSA nor EC, or the digest is unknown."""


def _hash(digest: str) -> hashes.HashAlgorithm:
    try:
        return HASHES[digest]()
    except KeyError:
        raise UnsupportedKey(f"digest {digest} unsupported; use one of {', '.join(HASHES)}") from None


def sign(key, data: bytes, digest: str = "sha256") -> bytes:
    """RSA PKCS#1 v1.5 or ECDSA over ``digest`` of ``data``."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), _hash(digest))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_hash(digest)))
    raise UnsupportedKey(f"cannot sign with a {type(key).__name__}")


def verify(public_key, signature: bytes, data: bytes, digest: str = "sha256") -> bool:
    """True when ``signature`` is ``public_key``'s over ``data``; False for a bad signature or a key
    type that cannot sign."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _hash(digest))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_hash(digest)))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def cms_algorithm(key, digest: str) -> str:
    """The CMS signatureAlgorithm name for ``key`` (asn1crypto's names; rsaEncryption as openssl writes it)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsassa_pkcs1v15"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"{digest}_ecdsa"
    raise UnsupportedKey(f"cannot sign with a {type(key).__name__}")
