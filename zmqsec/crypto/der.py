"""DER (ITU-T X.690) in the small: the one TLV reader and writer of the project.

Structures are parsed and built with asn1crypto; these few functions exist for
the places where that is too slow (envelopes with thousands of recipients) or
where exact bytes must be reproduced (OpenSSL's canonical names).
"""

from __future__ import annotations


class NotPlainDer(ValueError):
    """The bytes are not definite-length DER within the given bounds."""


def encode(tag: int, content: bytes) -> bytes:
    """One TLV with a definite length."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def set_of(elements: list[bytes]) -> bytes:
    """A SET OF: elements in ascending order as octet strings, the shorter padded with zeros (X.690 11.6)."""
    width = max(map(len, elements))
    return encode(0x31, b"".join(sorted(elements, key=lambda e: e.ljust(width, b"\0"))))


def header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the element at ``pos``, for DER another parser already
    accepted (a certificate cryptography loaded)."""
    first = data[pos + 1]
    if first < 0x80:
        return data[pos], pos + 2, pos + 2 + first
    n = first & 0x7F
    start = pos + 2 + n
    return data[pos], start, start + int.from_bytes(data[pos + 2:start], "big")


def read(data: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """Like :func:`header`, for untrusted input: definite lengths of at most 4 bytes, within ``limit``;
    anything else raises :class:`NotPlainDer`."""
    if pos + 2 > limit:
        raise NotPlainDer("truncated")
    first = data[pos + 1]
    if first == 0x80 or first > 0x84:  # indefinite (BER streaming) or absurd
        raise NotPlainDer("indefinite or oversized length")
    try:
        tag, start, end = header(data, pos)
    except IndexError:
        raise NotPlainDer("truncated") from None
    if start > limit or end > limit:
        raise NotPlainDer("element runs past its container")
    return tag, start, end


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each element between ``start`` and ``end``, untrusted."""
    out, pos = [], start
    while pos < end:
        tag, content_start, next_pos = read(data, pos, end)
        out.append((tag, pos, next_pos))
        pos = next_pos
    return out
