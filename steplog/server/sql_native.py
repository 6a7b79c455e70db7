"""Native output in the layout of the client's `client_protocol_version`.

ClickHouse writes a Native block for a client that names a protocol revision
(src/Formats/NativeWriter.cpp) with, compared with the layout for revision 0:
- the block info first (from any revision above 0): field 1 `is_overflows` (false), field 2
  `bucket_num` (-1), from 54480 field 3 `out_of_order_buckets` (empty), then 0
  (src/Core/BlockInfo.cpp);
- from 54454 (custom serialization), a byte after each column's type: 0 for the default
  serialization, which is the only one written here.
clickhouse-go v2 sends `client_protocol_version=54460` over HTTP and reads that layout.

chDB writes the revision-0 layout, so each block is walked and the additions put in. The walk
needs every column's data length, which only its type gives: fixed-width types are a
multiplication, String a walk over its length prefixes, and the containers (Nullable, Array, Map,
Tuple, LowCardinality) follow their default bulk serialization. Types whose serialization
depends on the revision (Dynamic, JSON, Variant, AggregateFunction states) are refused with
NOT_IMPLEMENTED naming the column, before any byte is sent: ask for another format for them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_errors import SqlError
from steplog.server.sql_text import split_top_level

__all__ = ["NativeLayout", "native_layout"]

MIN_REVISION: Final = 54405
"""Below it a client does not know LowCardinality, which ClickHouse then strips: not done here."""
_CUSTOM_SERIALIZATION: Final = 54454
_OUT_OF_ORDER_BUCKETS: Final = 54480
_BLOCK_INFO: Final = b"\x01\x00\x02\xff\xff\xff\xff"  # is_overflows=false, bucket_num=-1

_WIDTHS: Final = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Date", "Enum16", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "DateTime", "Date32", "IPv4", "Decimal32",
                     "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
# Geo types are names for containers of Float64 pairs.
_ALIASES: Final = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Ring)",
    "MultiLineString": "Array(LineString)",
    "MultiPolygon": "Array(Polygon)",
}
_TYPE: Final = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_NAMED_ELEMENT: Final = re.compile(r"^\s*(?:`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(?=\S)")
# LowCardinality's index serialization (SerializationLowCardinality.cpp).
_NEED_GLOBAL_DICTIONARY: Final = 1 << 8
_HAS_ADDITIONAL_KEYS: Final = 1 << 9
_UINT64: Final = struct.Struct("<Q")


@dataclass(frozen=True)
class NativeLayout:
    """How Native blocks are written for one client revision."""

    revision: int

    def rewrite(self, data: bytes) -> bytes:
        """`data` (whole Native blocks in the revision-0 layout, as the engine writes them) in
        this revision's layout. SqlError (NOT_IMPLEMENTED) for a column it cannot walk."""
        if self.revision == 0 or not data:
            return data
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        at = 0
        while at < len(view):
            at = self._block(view, at, out)
        return b"".join(out)

    def _block(self, view: memoryview, at: int, out: list[bytes | memoryview]) -> int:
        out.append(_BLOCK_INFO)
        if self.revision >= _OUT_OF_ORDER_BUCKETS:
            out.append(b"\x03\x00")
        out.append(b"\x00")
        start = at
        columns, at = _varint(view, at)
        rows, at = _varint(view, at)
        for _ in range(columns):
            name, at = _string(view, at)
            type_name, at = _string(view, at)
            out.append(view[start:at])
            if self.revision >= _CUSTOM_SERIALIZATION:
                out.append(b"\x00")
            start = at
            if rows:
                kind = _parse(bytes(type_name).decode("utf-8"), bytes(name))
                at = (_skip_low_cardinality(kind, rows, view, at) if kind.name == "LowCardinality"
                      else _skip(kind, rows, view, at))
        out.append(view[start:at])
        return at


def native_layout(sent: str | None) -> NativeLayout:
    """The layout for a request's `client_protocol_version` (absent: revision 0, the engine's
    own). SqlError naming the value when it is not one this endpoint writes."""
    if sent is None or sent.strip() in ("", "0"):
        return NativeLayout(0)
    if not sent.strip().isdigit():
        raise SqlError(36, "BAD_ARGUMENTS",
                       f"client_protocol_version must be a number, got {sent[:20]!r}")
    revision = int(sent)
    if revision < MIN_REVISION:
        raise SqlError(48, "NOT_IMPLEMENTED",
                       f"client_protocol_version {revision} is older than the {MIN_REVISION} "
                       "this endpoint writes Native blocks for (without it: the revision-0 "
                       "layout)")
    return NativeLayout(revision)


@dataclass(frozen=True)
class _Type:
    name: str
    args: tuple[str, ...]
    column: bytes

    def arg(self, index: int) -> _Type:
        return _parse(self.args[index], self.column)


def _parse(text: str, column: bytes) -> _Type:
    found = _TYPE.match(text)
    if found is None:
        raise _unsupported(text, column)
    name, inner = found.group(1), found.group(2)
    if name in _ALIASES and inner is None:
        return _parse(_ALIASES[name], column)
    return _Type(name, tuple(split_top_level(inner)) if inner else (), column)


def _skip(kind: _Type, rows: int, view: memoryview, at: int) -> int:
    """The position after `rows` values of `kind` in the default bulk serialization."""
    name = kind.name
    if name in _WIDTHS:
        return _within(view, at + rows * _WIDTHS[name], kind)
    if name == "Decimal":
        precision = int(kind.args[0])
        width = 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        return _within(view, at + rows * width, kind)
    if name.startswith("Interval"):
        return _within(view, at + rows * 8, kind)
    if name == "FixedString":
        return _within(view, at + rows * int(kind.args[0]), kind)
    if name == "String":
        return _skip_strings(view, at, rows, kind)
    if name == "Nullable":
        return _skip(kind.arg(0), rows, view, _within(view, at + rows, kind))
    if name == "Array":
        return _skip_array(kind.arg(0), rows, view, at)
    if name == "Map":
        pair = _Type("Tuple", kind.args, kind.column)
        return _skip_array(pair, rows, view, at)
    if name == "Tuple":
        for index in range(len(kind.args)):
            element = _NAMED_ELEMENT.sub("", kind.args[index], count=1)
            at = _skip(_parse(element, kind.column), rows, view, at)
        return at
    if name == "SimpleAggregateFunction":
        return _skip(kind.arg(len(kind.args) - 1), rows, view, at)
    if name == "LowCardinality":
        # Inside a container its state prefix comes before the container's data: not walked.
        raise _unsupported("LowCardinality inside Array, Map or Tuple", kind.column)
    raise _unsupported(name, kind.column)


def _skip_strings(view: memoryview, at: int, rows: int, kind: _Type) -> int:
    end = len(view)
    for _ in range(rows):
        if at >= end:
            raise _cut(kind)
        length = view[at]
        if length < 0x80:  # most strings: a one-byte length
            at += 1 + length
        else:
            length, at = _varint(view, at)
            at += length
    return _within(view, at, kind)


def _skip_array(element: _Type, rows: int, view: memoryview, at: int) -> int:
    offsets_end = _within(view, at + rows * 8, element)
    total = _UINT64.unpack_from(view, offsets_end - 8)[0]
    return _skip(element, total, view, offsets_end)


def _skip_low_cardinality(kind: _Type, rows: int, view: memoryview, at: int) -> int:
    """A top-level LowCardinality column: its state prefix, then its keys and indices."""
    at = _within(view, at + 8, kind)  # the state prefix: the key serialization version
    flags = _UINT64.unpack_from(view, _within(view, at + 8, kind) - 8)[0]
    at += 8
    if flags & _NEED_GLOBAL_DICTIONARY:
        raise _unsupported("LowCardinality with a global dictionary", kind.column)
    if flags & _HAS_ADDITIONAL_KEYS:
        keys = _UINT64.unpack_from(view, _within(view, at + 8, kind) - 8)[0]
        dictionary = kind.arg(0)
        if dictionary.name == "Nullable":  # the dictionary holds the values, NULL among them
            dictionary = dictionary.arg(0)
        at = _skip(dictionary, keys, view, at + 8)
    indices = _UINT64.unpack_from(view, _within(view, at + 8, kind) - 8)[0]
    if indices != rows:
        raise _cut(kind)
    return _within(view, at + 8 + indices * (1 << (flags & 0xFF)), kind)


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(view) or shift > 63:
            raise SqlError(1000, "STD_EXCEPTION", "the engine's Native output is cut short")
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _string(view: memoryview, at: int) -> tuple[memoryview, int]:
    length, at = _varint(view, at)
    if at + length > len(view):
        raise SqlError(1000, "STD_EXCEPTION", "the engine's Native output is cut short")
    return view[at:at + length], at + length


def _within(view: memoryview, at: int, kind: _Type) -> int:
    if at > len(view):
        raise _cut(kind)
    return at


def _cut(kind: _Type) -> SqlError:
    return SqlError(1000, "STD_EXCEPTION",
                    f"the engine's Native output of column {_shown(kind.column)} ({kind.name}) "
                    "is not as expected")


def _unsupported(type_name: str, column: bytes) -> SqlError:
    return SqlError(48, "NOT_IMPLEMENTED",
                    f"Native output for a client_protocol_version is not implemented for "
                    f"column {_shown(column)} of type {type_name[:80]}: cast it (to String, "
                    "for one) or ask for another format, such as RowBinaryWithNamesAndTypes")


def _shown(column: bytes) -> str:
    return repr(column[:64].decode("utf-8", errors="replace"))
