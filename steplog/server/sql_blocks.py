"""ClickHouse's own compressed blocks: `compress=1` responses and `decompress=1` request bodies.

This is not HTTP compression (Content-Encoding) but the framing ClickHouse uses between its
servers and in its files (src/Compression/CompressedWriteBuffer.cpp, CompressedReadBufferBase):
each block is

    16 bytes  CityHash128 (version 1.0.2) of the 9-byte header and the compressed data
     1 byte   method: 0x82 LZ4 (a raw LZ4 block), 0x90 ZSTD (a zstd frame), 0x02 none
     4 bytes  UInt32 size of header + compressed data
     4 bytes  UInt32 size of the data uncompressed
              the compressed data

clickhouse-jdbc asks for it (`compress=1`, and reads nothing else then), as does clickhouse-go
with LZ4 or ZSTD. The hash is clickhouse-cityhash's (the CityHash 1.0.2 that ClickHouse keeps,
as clickhouse-driver uses it), the codecs are lz4's and zstd's, all kept libraries. The byte
order of the checksum was checked against blocks the engine itself wrote (TinyLog files with
CODEC(LZ4) and CODEC(ZSTD)): tests/unit/test_sql_blocks.py reads those.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import Final

import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

from steplog.server.sql_compression import zstd_module
from steplog.server.sql_errors import SqlError

__all__ = ["BlockReader", "BlockWriter", "Method", "read_blocks"]

_HEADER: Final = struct.Struct("<BII")
_CHECKSUM_SIZE: Final = 16
_MASK64: Final = (1 << 64) - 1
_MAX_BLOCK: Final = 1024 * 1024
"""The most a written block holds uncompressed: ClickHouse's max_compress_block_size."""
_MAX_READ_BLOCK: Final = 1024 * 1024 * 1024
"""The largest block read (ClickHouse's DBMS_MAX_COMPRESSED_SIZE: 1 GiB)."""


class Method(IntEnum):
    NONE = 0x02
    LZ4 = 0x82
    ZSTD = 0x90


class BlockWriter:
    """Bytes as compressed blocks, in `method` (ClickHouse's default for `compress=1` is LZ4).
    Each `write` returns whole blocks: a client decodes what it has received so far."""

    def __init__(self, method: Method = Method.LZ4) -> None:
        self.method = method

    def write(self, data: bytes) -> bytes:
        return b"".join(self._block(data[at:at + _MAX_BLOCK])
                        for at in range(0, len(data), _MAX_BLOCK))

    def _block(self, raw: bytes) -> bytes:
        if self.method is Method.LZ4:
            packed = bytes(lz4.block.compress(raw, store_size=False))
        elif self.method is Method.ZSTD:
            packed = bytes(zstd_module().compress(raw, 1))  # ClickHouse's default zstd level
        else:
            packed = raw
        body = _HEADER.pack(self.method, _HEADER.size + len(packed), len(raw)) + packed
        return _checksum(body) + body


class BlockReader:
    """`decompress=1` bytes as they arrive: `feed` each chunk, then `end` once. Each block's
    data comes out once the whole block has (a block is held until then: ClickHouse's clients
    write blocks of at most 1 MiB uncompressed); each checksum is checked
    (CHECKSUM_DOESNT_MATCH when it fails)."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._at = 0  # where _pending starts in the body, for errors

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._pending += data
        while len(self._pending) >= _CHECKSUM_SIZE + _HEADER.size:
            at = self._at
            method, size, raw_size = _HEADER.unpack_from(self._pending, _CHECKSUM_SIZE)
            if size < _HEADER.size or size > _MAX_READ_BLOCK or raw_size > _MAX_READ_BLOCK:
                raise SqlError(246, "TOO_LARGE_SIZE_COMPRESSED",
                               f"the compressed block at byte {at} claims {size} bytes "
                               f"compressed, {raw_size} uncompressed")
            end = _CHECKSUM_SIZE + size
            if len(self._pending) < end:
                return
            body = bytes(self._pending[_CHECKSUM_SIZE:end])
            if _checksum(body) != self._pending[:_CHECKSUM_SIZE]:
                raise SqlError(40, "CHECKSUM_DOESNT_MATCH",
                               f"Checksum doesn't match: corrupted data in the block at byte {at}")
            del self._pending[:end]
            self._at += end
            yield _unpacked(method, body[_HEADER.size:], raw_size, at)

    def end(self) -> None:
        """The body has ended: SqlError if it ends inside a block."""
        if len(self._pending) >= _CHECKSUM_SIZE + _HEADER.size:
            size = _HEADER.unpack_from(self._pending, _CHECKSUM_SIZE)[1]
            raise _corrupt(f"the block at byte {self._at} is cut short ({len(self._pending)} "
                           f"of {_CHECKSUM_SIZE + size} bytes)")
        if self._pending:
            raise _corrupt(f"a block header is cut short at byte {self._at}")


def read_blocks(data: bytes, limit: int) -> bytes:
    """The bytes held by `data`, a run of compressed blocks, at most `limit` of them
    (BlockReader on a body already in memory)."""
    reader = BlockReader()
    out = bytearray()
    for raw in reader.feed(data):
        out += raw
        if len(out) > limit:
            raise SqlError(290, "LIMIT_EXCEEDED", "the request body is larger than the "
                                                  f"endpoint's maximum of {limit} bytes")
    reader.end()
    return bytes(out)


def _unpacked(method: int, packed: bytes, raw_size: int, at: int) -> bytes:
    try:
        if method == Method.LZ4:
            raw = bytes(lz4.block.decompress(packed, uncompressed_size=raw_size))
        elif method == Method.ZSTD:
            raw = bytes(zstd_module().decompress(packed))
        elif method == Method.NONE:
            raw = packed
        else:
            raise SqlError(89, "UNKNOWN_COMPRESSION_METHOD",
                           f"Unknown compression method 0x{method:02x} in the block at byte "
                           f"{at}: LZ4 (0x82), ZSTD (0x90) and none (0x02) are read")
    except SqlError:
        raise
    except Exception as exc:
        raise _corrupt(f"the block at byte {at} does not decompress: {exc}") from None
    if len(raw) != raw_size:
        raise _corrupt(f"the block at byte {at} decompresses to {len(raw)} bytes, "
                       f"not the {raw_size} its header says")
    return raw


def _checksum(body: bytes) -> bytes:
    # ClickHouse writes the hash's first 64-bit half, then its second, each little-endian;
    # clickhouse-cityhash's integer holds the first half in its high bits.
    value = CityHash128(body)
    return struct.pack("<QQ", value >> 64, value & _MASK64)


def _corrupt(what: str) -> SqlError:
    return SqlError(271, "CANNOT_DECOMPRESS", f"cannot read ClickHouse compressed data: {what}")

