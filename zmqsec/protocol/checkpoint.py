"""Checkpoints and run frames: what the publisher signs with its own key besides announcements.

Checkpoints are the publisher's signature over the digests of a run of data frames.

Every authorized reader holds the epoch key, so AES-GCM alone cannot tell the
publisher's frames from an insider's.  The publisher signs, every few
milliseconds or every few hundred frames, the SHA-256 digests of the data
frames it sent; readers deliver a frame only once a checkpoint vouches for it.
One signature per checkpoint amortizes the cost (docs/PROTOCOL.md §5).
"""

from __future__ import annotations

from cryptography import x509

from zmqsec.crypto import signing

from .frames import CHECKPOINT, RUN, Checkpoint, RunFrame, topic_for
from .primitives import checkpoint_signing_input, run_signing_input


def sign_checkpoint(stream: bytes, stream_id: bytes, first_seq: int, digests: bytes, key) -> Checkpoint:
    """The publisher's signature (RSA PKCS#1 v1.5 or ECDSA, over SHA-256) over the digests of a run of frames."""
    topic = topic_for(stream, CHECKPOINT)
    data = checkpoint_signing_input(topic, stream_id, first_seq, digests)
    return Checkpoint(topic, stream_id, first_seq, digests, signing.sign(key, data))


def checkpoint_valid(checkpoint: Checkpoint, publisher: x509.Certificate) -> bool:
    """Does the checkpoint's signature verify with the publisher certificate's key?"""
    data = checkpoint_signing_input(checkpoint.topic, checkpoint.stream_id, checkpoint.first_seq, checkpoint.digests)
    return signing.verify(publisher.public_key(), checkpoint.signature, data)


def sign_run(stream: bytes, stream_id: bytes, previous: bytes, previous_last_seq: int, key) -> RunFrame:
    """A run frame: this run (``stream_id``) follows ``previous`` (empty: none), which sent up to ``previous_last_seq``."""
    topic = topic_for(stream, RUN)
    data = run_signing_input(topic, stream_id, previous, previous_last_seq)
    return RunFrame(topic, stream_id, previous, previous_last_seq, signing.sign(key, data))


def run_valid(frame: RunFrame, publisher: x509.Certificate) -> bool:
    """Does the run frame's signature verify with the publisher certificate's key?"""
    data = run_signing_input(frame.topic, frame.stream_id, frame.previous_stream_id, frame.previous_last_seq)
    return signing.verify(publisher.public_key(), frame.signature, data)
