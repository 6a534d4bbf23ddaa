"""Every label, size and small derivation of protocol v1, in one place (docs/PROTOCOL.md §2).

Pure functions over bytes: nonces, associated data, frame digests, checkpoint
signing input, the key-confirmation value and the key record that travels
inside each CMS envelope.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgpack

VERSION = 1  # data, checkpoint and run frames, and the records inside envelopes
ANNOUNCEMENT_VERSION = 2  # K, G and T frames: their header is a signed attribute (docs/PROTOCOL.md §4.3)
ANNOUNCEMENT_VERSIONS = (1, 2)  # what a reader accepts (a version 1 header is bound only by the key record)
# The signed attribute that carries an announcement's header (a UUID OID, X.667 2.25)
HEADER_ATTRIBUTE = "2.25.231158218096122888960557104531058619953"

STREAM_ID_BYTES = 16
KEY_BYTES = 32  # AES-256-GCM
KEY_CHECK_BYTES = 16
DIGEST_BYTES = 32  # SHA-256

MAX_TOPIC_BYTES = 200
MAX_EPOCH = 2**32 - 1
MAX_SEQ = 2**64 - 1
MAX_DATA_FRAME = 16 * 1024 * 1024
# The largest payload whose data frame fits MAX_DATA_FRAME: the body adds msgpack framing, the
# stream id, epoch and sequence number (at most 48 bytes) and the 16-byte GCM tag.
MAX_PAYLOAD = MAX_DATA_FRAME - 64
MAX_ANNOUNCEMENT_FRAME = 64 * 1024 * 1024
MAX_CHECKPOINT_DIGESTS = 4096
# A subscription message is 0x01/0x00 and a topic prefix; the longest real one is a group topic
# (name, NUL, 'G', 16 bits, '.').  Every XPUB refuses bigger ones: libzmq's subscription trie
# recurses once per byte, and a 1 MB subscription exhausts its stack (docs/PROTOCOL.md §9).
MAX_SUBSCRIPTION = 256
# The socket bound on what XPUBs receive: above any real subscription, and above the CurveZMQ
# handshake commands (INITIATE carries metadata), which libzmq bounds by the same option.
MAX_XPUB_MESSAGE = 4096

LABEL_DATA = b"zmqsec/v1/data"
LABEL_DIGEST = b"zmqsec/v1/frame-digest"
LABEL_CHECKPOINT = b"zmqsec/v1/checkpoint"
LABEL_KEY_CHECK = b"zmqsec/v1/key-check"
LABEL_GROUP_KEY_CHECK = b"zmqsec/v1/group-key-check"
LABEL_RUN = b"zmqsec/v1/run"
LABEL_TREE_KEY_CHECK = b"zmqsec/v1/tree-key-check"
LABEL_TREE_DERIVE = b"zmqsec/v1/tree-derive"
LABEL_HEADER = b"zmqsec/v2/announcement-header"
HEADER_DIGEST_BYTES = 16

MAX_GROUP_BITS = 16  # a group tag is 0..16 bits of the reader certificate's SHA-256
MAX_GENERATION = 2**32 - 1
MAX_TREE_BITS = 32  # a key tree topic's tag: the first 0..32 bits of its node's tag
TREE_BITS = 256  # a key tree node's tag: 0..256 bits of a reader certificate's SHA-256
MAX_TREE_KEYS = 96  # the keys one tree key record may carry (a path: leaf, up to 33 nodes, earlier roots)

_AAD = struct.Struct(">H")
_EPOCH_SEQ = struct.Struct(">IQ")
_SEQ = struct.Struct(">Q")


def nonce(epoch: int, seq: int) -> bytes:
    """AES-GCM nonce: epoch (4 bytes) || sequence number (8 bytes), big-endian.

    Each epoch has a fresh random key and a stream's sequence numbers only grow,
    so no (key, nonce) pair ever repeats.
    """
    return _EPOCH_SEQ.pack(epoch, seq)


def associated_data(topic: bytes, stream_id: bytes, epoch: int, seq: int) -> bytes:
    """What AES-GCM authenticates besides the payload: label, topic, stream identity, epoch, sequence."""
    return LABEL_DATA + _AAD.pack(len(topic)) + topic + stream_id + _EPOCH_SEQ.pack(epoch, seq)


def frame_digest(topic: bytes, body: bytes) -> bytes:
    """SHA-256 of a whole data frame (topic frame and body), as checkpoints list them: SHA-256(label ||
    len(topic) || topic || body), the body hashed where it lies (a 64 KiB body is not copied)."""
    digest = hashlib.sha256(LABEL_DIGEST + _AAD.pack(len(topic)) + topic)
    digest.update(body)
    return digest.digest()


def checkpoint_signing_input(topic: bytes, stream_id: bytes, first_seq: int, digests: bytes) -> bytes:
    """The bytes the publisher signs for a checkpoint."""
    return LABEL_CHECKPOINT + _AAD.pack(len(topic)) + topic + stream_id + _SEQ.pack(first_seq) + digests


def header_digest(topic: bytes, stream_id: bytes, number: int) -> bytes:
    """What an announcement's header attribute holds (docs/PROTOCOL.md §4.3): the first 16 bytes of
    SHA-256(label || len(topic) || topic || stream id || epoch or generation)."""
    data = LABEL_HEADER + _AAD.pack(len(topic)) + topic + stream_id + struct.pack(">I", number)
    return hashlib.sha256(data).digest()[:HEADER_DIGEST_BYTES]


def run_signing_input(topic: bytes, stream_id: bytes, previous: bytes, previous_last_seq: int) -> bytes:
    """The bytes the publisher signs for a run frame (docs/PROTOCOL.md §10.2)."""
    return (LABEL_RUN + _AAD.pack(len(topic)) + topic + stream_id + bytes((len(previous),)) + previous
            + _SEQ.pack(previous_last_seq))


def key_check(key: bytes, topic: bytes, stream_id: bytes, epoch: int) -> bytes:
    """Key confirmation: HMAC-SHA256(key, label || len(topic) || topic || stream id || epoch), first 16 bytes.

    It covers every field of the key record, so a record altered in transit
    (AES-CBC is malleable) never confirms.
    """
    data = LABEL_KEY_CHECK + _AAD.pack(len(topic)) + topic + stream_id + struct.pack(">I", epoch)
    return hmac.new(key, data, hashlib.sha256).digest()[:KEY_CHECK_BYTES]


def group_key_check(kek: bytes, name: bytes, stream_id: bytes, tag: bytes, generation: int) -> bytes:
    """Group key confirmation: HMAC-SHA256(kek, label || len(name) || name || stream id || len(tag) || tag || generation)."""
    data = (LABEL_GROUP_KEY_CHECK + _AAD.pack(len(name)) + name + stream_id + _AAD.pack(len(tag)) + tag
            + struct.pack(">I", generation))
    return hmac.new(kek, data, hashlib.sha256).digest()[:KEY_CHECK_BYTES]


def encode_key_record(topic: bytes, stream_id: bytes, epoch: int, key: bytes) -> bytes:
    """The plaintext inside an epoch's CMS envelope."""
    return msgpack.packb([VERSION, topic, stream_id, epoch, key, key_check(key, topic, stream_id, epoch)], use_bin_type=True)


def encode_group_record(name: bytes, stream_id: bytes, tag: bytes, generation: int, kek: bytes) -> bytes:
    """The plaintext inside a group key announcement's CMS envelope."""
    return msgpack.packb([VERSION, name, stream_id, tag, generation, kek,
                          group_key_check(kek, name, stream_id, tag, generation)], use_bin_type=True)


class KeyRecordError(ValueError):
    """The envelope decrypted to something that is not a valid key record."""


def _unpack_record(data: bytes, arity: int) -> list:
    try:
        record = msgpack.unpackb(data, raw=True, use_list=True, max_bin_len=1024, max_array_len=16, max_str_len=1024)
    except Exception:
        raise KeyRecordError("key record is not msgpack") from None
    if not (isinstance(record, list) and len(record) == arity):
        raise KeyRecordError(f"key record is not a {arity}-element array")
    if record[0] != VERSION:
        raise KeyRecordError(f"key record version {record[0]!r} unsupported")
    return record


def _uint(value, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def decode_key_record(data: bytes) -> tuple[bytes, bytes, int, bytes]:
    """Parse and confirm a key record: (topic, stream_id, epoch, key)."""
    _, topic, stream_id, epoch, key, check = _unpack_record(data, 6)
    if not (isinstance(topic, bytes) and isinstance(stream_id, bytes) and len(stream_id) == STREAM_ID_BYTES
            and _uint(epoch, MAX_EPOCH) and isinstance(key, bytes) and len(key) == KEY_BYTES and isinstance(check, bytes)):
        raise KeyRecordError("key record fields have wrong types or sizes")
    if not hmac.compare_digest(check, key_check(key, topic, stream_id, epoch)):
        raise KeyRecordError("key confirmation failed: the decrypted key is not the publisher's")
    return topic, stream_id, epoch, key


def decode_group_record(data: bytes) -> tuple[bytes, bytes, bytes, int, bytes]:
    """Parse and confirm a group key record: (name, stream_id, tag, generation, kek)."""
    _, name, stream_id, tag, generation, kek, check = _unpack_record(data, 7)
    if not (isinstance(name, bytes) and isinstance(stream_id, bytes) and len(stream_id) == STREAM_ID_BYTES
            and isinstance(tag, bytes) and len(tag) <= MAX_GROUP_BITS and _uint(generation, MAX_GENERATION)
            and isinstance(kek, bytes) and len(kek) == KEY_BYTES and isinstance(check, bytes)):
        raise KeyRecordError("group key record fields have wrong types or sizes")
    if not hmac.compare_digest(check, group_key_check(kek, name, stream_id, tag, generation)):
        raise KeyRecordError("group key confirmation failed: the decrypted key is not the publisher's")
    return name, stream_id, tag, generation, kek


# -- key tree (docs/PROTOCOL.md §4.6) ------------------------------------------------------------

def _tree_node(name: bytes, stream_id: bytes, tag: bytes, generation: int) -> bytes:
    return _AAD.pack(len(name)) + name + stream_id + _AAD.pack(len(tag)) + tag + struct.pack(">I", generation)


def tree_derive(child_key: bytes, name: bytes, stream_id: bytes, tag: bytes, generation: int) -> bytes:
    """The key of tree node (``tag``, ``generation``) derived from the new key of its child on the changed path:
    HMAC-SHA256(child key, LABEL_TREE_DERIVE || u16(len(name)) || name || stream id || u16(len(tag)) || tag ||
    u32(generation))."""
    return hmac.new(child_key, LABEL_TREE_DERIVE + _tree_node(name, stream_id, tag, generation), hashlib.sha256).digest()


def tree_kek_id(tag: bytes, generation: int) -> bytes:
    """The KEKRecipientInfo key identifier of a tree node key: ``t<tag>.<generation>`` in ASCII."""
    return b"t" + tag + b"." + str(generation).encode()


def _tree_fields(name: bytes, stream_id: bytes, tag: bytes, generation: int, keys, lengths) -> bytes:
    return msgpack.packb([name, stream_id, tag, generation, [list(k) for k in keys], list(lengths)],
                         use_bin_type=True)


def tree_key_check(name: bytes, stream_id: bytes, tag: bytes, generation: int, keys, lengths) -> bytes:
    """Tree key confirmation: HMAC-SHA256(first key, LABEL_TREE_KEY_CHECK || msgpack([name, stream id, tag,
    generation, keys, derived lengths])), first 16 bytes: it covers every field of the record."""
    data = LABEL_TREE_KEY_CHECK + _tree_fields(name, stream_id, tag, generation, keys, lengths)
    return hmac.new(keys[0][2], data, hashlib.sha256).digest()[:KEY_CHECK_BYTES]


def encode_tree_record(name: bytes, stream_id: bytes, tag: bytes, generation: int, keys, derived) -> bytes:
    """The plaintext inside a tree announcement's envelope, for the readers under node ``tag``, made by update
    ``generation``: ``keys`` is [(tag, generation, key), ...], the keys it carries; ``derived`` [(tag,
    generation), ...], the nodes whose keys follow from the first of them, each from the one before: ancestors
    of the first key's node, made by the same update, so that the record carries only their tag lengths
    (docs/PROTOCOL.md §4.6).  Raises :class:`ValueError` for a ``derived`` node that is not such an ancestor."""
    first_tag, first_generation = keys[0][0], keys[0][1]
    lengths = [len(t) for t, _ in derived]
    if any(g != first_generation or not first_tag.startswith(t) for t, g in derived) or \
            any(a <= b for a, b in zip([len(first_tag)] + lengths, lengths)):
        raise ValueError("derived nodes must be ancestors of the first key's node, nearest first, of its update")
    return msgpack.packb([VERSION, name, stream_id, tag, generation, [list(k) for k in keys], lengths,
                          tree_key_check(name, stream_id, tag, generation, keys, lengths)], use_bin_type=True)


def _tree_key(entry) -> tuple | None:
    if not (isinstance(entry, list) and len(entry) == 3):
        return None
    tag, generation, key = entry
    if not (isinstance(tag, bytes) and len(tag) <= TREE_BITS and not tag.strip(b"01")
            and _uint(generation, MAX_GENERATION) and isinstance(key, bytes) and len(key) == KEY_BYTES):
        return None
    return tag, generation, key


def decode_tree_record(data: bytes) -> tuple[bytes, bytes, bytes, int, list[tuple[bytes, int, bytes]],
                                             list[tuple[bytes, int]]]:
    """Parse and confirm a tree key record: (name, stream_id, tag, generation, keys, derived), ``derived`` as
    (tag, generation) pairs."""
    try:
        record = msgpack.unpackb(data, raw=True, use_list=True, max_bin_len=1024, max_array_len=MAX_TREE_KEYS + 1,
                                 max_str_len=0, max_map_len=0, max_ext_len=0)
    except Exception:
        raise KeyRecordError("tree key record is not msgpack") from None
    if not (isinstance(record, list) and len(record) == 8):
        raise KeyRecordError("tree key record is not an 8-element array")
    version, name, stream_id, tag, generation, keys, lengths, check = record
    if version != VERSION:
        raise KeyRecordError(f"tree key record version {version!r} unsupported")
    if not (isinstance(name, bytes) and isinstance(stream_id, bytes) and len(stream_id) == STREAM_ID_BYTES
            and isinstance(tag, bytes) and len(tag) <= TREE_BITS and not tag.strip(b"01")
            and _uint(generation, MAX_GENERATION) and isinstance(keys, list) and 1 <= len(keys) <= MAX_TREE_KEYS
            and isinstance(lengths, list) and isinstance(check, bytes)):
        raise KeyRecordError("tree key record fields have wrong types or sizes")
    keys = [_tree_key(k) for k in keys]
    if None in keys:
        raise KeyRecordError("tree key record entries have wrong types or sizes")
    first_tag, first_generation = keys[0][0], keys[0][1]
    bounds = [len(first_tag)] + lengths
    if not all(type(n) is int and 0 <= n < above for n, above in zip(lengths, bounds)):
        raise KeyRecordError("tree key record: derived lengths must fall, below the first key's tag length")
    if not hmac.compare_digest(check, tree_key_check(name, stream_id, tag, generation, keys, lengths)):
        raise KeyRecordError("tree key confirmation failed: the decrypted keys are not the publisher's")
    return name, stream_id, tag, generation, keys, [(first_tag[:n], first_generation) for n in lengths]
