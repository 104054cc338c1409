"""Direct tf.Example wire-format encoding, without protobuf message objects.

A serialized ``Example`` is field 1 (``Features``) holding repeated map entries
``{key: string = 1, value: Feature = 2}``. A ``Feature`` is one of ``bytes_list = 1``,
``float_list = 2`` (packed floats) or ``int64_list = 3`` (packed varints). Because a
parser merges repeated occurrences of a message field, two serialized Examples joined
end to end parse as one Example holding both maps (the later value wins on a duplicate
key); the shared-part trick in ``packing`` relies on this.
"""
from __future__ import annotations

import struct
from typing import Iterable, Sequence

_MASK64 = (1 << 64) - 1
_SMALL = [bytes((n,)) for n in range(0x80)]
_FIELD1_HEAD = [b"\n" + b for b in _SMALL]  # tag of field 1, length-delimited, and a one-byte length
_PACK_FLOAT = struct.Struct("<f").pack
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def bytes_feature(values: Iterable[bytes]) -> bytes:
    """A ``Feature`` holding a BytesList."""
    return _delimited(b"\n", b"".join([_FIELD1_HEAD[len(v)] + v if len(v) < 0x80 else _delimited(b"\n", v)
                                       for v in values]))


def float_feature(values: Sequence[float]) -> bytes:
    """A ``Feature`` holding a packed FloatList; raises OverflowError outside float32 range."""
    inner = _delimited(b"\n", struct.pack(f"<{len(values)}f", *values)) if values else b""
    return _delimited(b"\x12", inner)


def int64_feature(values: Iterable[int]) -> bytes:
    """A ``Feature`` holding a packed Int64List (negative values as 10-byte varints)."""
    payload = b"".join(varint(v & _MASK64) for v in values)
    return _delimited(b"\x1a", _delimited(b"\n", payload) if payload else b"")


def map_entry(key: bytes, feature: bytes) -> bytes:
    """One ``Features.feature`` map entry, ready to be joined with others."""
    return _delimited(b"\n", _delimited(b"\n", key) + _delimited(b"\x12", feature))


def example(entries: Iterable[bytes]) -> bytes:
    """A serialized ``Example`` from map entries."""
    return _delimited(b"\n", b"".join(entries))


class BytesEntry:
    """Encodes ``{key: [value]}`` entries for one bytes feature with a per-length header table."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._heads = [self._head(n) for n in range(100)]

    def _head(self, n: int) -> bytes:
        return map_entry(self._key, bytes_feature([b"\0" * n]))[:-n or None]

    def __call__(self, value: bytes) -> bytes:
        n = len(value)
        return (self._heads[n] if n < 100 else self._head(n)) + value


class FloatEntry:
    """Encodes ``{key: [value]}`` entries for one float feature: a constant header and 4 bytes."""

    def __init__(self, key: str) -> None:
        self._head = map_entry(key.encode(), float_feature([0.0]))[:-4]

    def __call__(self, value: float) -> bytes:
        return self._head + _PACK_FLOAT(value)


class Int64Entry:
    """Encodes ``{key: [value]}`` entries for one int64 feature."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def __call__(self, value: int) -> bytes:
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(f"{value} is outside the int64 range")
        return map_entry(self._key, int64_feature((value,)))
