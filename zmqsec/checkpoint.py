"""Checkpoints: the publisher's signature over the digests of a run of data frames.

Every authorized reader holds the epoch key, so AES-GCM alone cannot tell the
publisher's frames from an insider's.  The publisher signs, every few
milliseconds or every few hundred frames, the SHA-256 digests of the data
frames it sent; readers deliver a frame only once a checkpoint vouches for it.
One signature per checkpoint amortizes the cost (docs/PROTOCOL.md §5).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .frames import CHECKPOINT, Checkpoint, topic_for
from .primitives import checkpoint_signing_input


def sign_checkpoint(stream: bytes, stream_id: bytes, first_seq: int, digests: bytes, key) -> Checkpoint:
    """RSA PKCS#1 v1.5 or ECDSA, both over SHA-256, by the publisher's certificate key."""
    topic = topic_for(stream, CHECKPOINT)
    data = checkpoint_signing_input(topic, stream_id, first_seq, digests)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return Checkpoint(topic, stream_id, first_seq, digests, signature)


def checkpoint_valid(checkpoint: Checkpoint, publisher: x509.Certificate) -> bool:
    data = checkpoint_signing_input(checkpoint.topic, checkpoint.stream_id, checkpoint.first_seq, checkpoint.digests)
    public = publisher.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(checkpoint.signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(checkpoint.signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True

