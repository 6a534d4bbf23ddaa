"""The data cipher (docs/PROTOCOL.md §2, §3): the one AES-256-GCM path of data frames.

The publisher seals, every reader opens; the nonce and associated data bind the
ciphertext to its topic, stream identity, epoch and sequence number, so a frame
moved to another place in the stream does not open.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .primitives import KEY_BYTES, associated_data, nonce


class OpenFailed(ValueError):
    """AES-GCM authentication failed: altered, forged, or sealed under another key or place."""


class DataKey:
    """An epoch's data key.  Never shows the key in a repr or a log line."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, topic: bytes, stream_id: bytes, epoch: int, seq: int, payload: bytes) -> bytes:
        """Ciphertext and tag of ``payload`` at (topic, stream id, epoch, seq)."""
        return self._aead.encrypt(nonce(epoch, seq), payload, associated_data(topic, stream_id, epoch, seq))

    def open(self, topic: bytes, stream_id: bytes, epoch: int, seq: int, ciphertext: bytes) -> bytes:
        """The payload, or :class:`OpenFailed`."""
        try:
            return self._aead.decrypt(nonce(epoch, seq), ciphertext, associated_data(topic, stream_id, epoch, seq))
        except InvalidTag:
            raise OpenFailed(f"epoch {epoch} seq {seq}: AES-GCM authentication failed") from None

    def __repr__(self) -> str:
        return "DataKey(<hidden>)"
