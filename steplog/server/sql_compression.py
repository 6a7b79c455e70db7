"""Request bodies as clients compress them (`Content-Encoding`), decoded whole.

aiohttp knows neither lz4 nor ClickHouse's error format, so the SQL endpoint runs with
aiohttp's own request decompression off and decodes here. Issue 19 adds ClickHouse's own
compressed-block framing (`decompress=1`); issue 22 decodes as the body streams in.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Callable
from typing import Protocol

from steplog.server.sql_errors import SqlError

__all__ = ["decompress"]


def decompress(encoding: str, body: bytes) -> bytes:
    """The request body without its Content-Encoding (clickhouse-connect sends lz4 or zstd)."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return body
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return _every_part(body, zlib.decompressobj, "stream")
        if encoding == "lz4":
            import lz4.frame  # clickhouse-connect's own dependency

            return _every_part(body, lz4.frame.LZ4FrameDecompressor, "frame")
        if encoding == "zstd":
            # clickhouse-connect's own zstd: the standard library's from Python 3.14, the
            # backport before (the `zstandard` package is not installed with it).
            if sys.version_info >= (3, 14):
                from compression import zstd
            else:
                from backports import zstd

            return bytes(zstd.decompress(body))
    except Exception as exc:
        raise SqlError(
            432, "UNKNOWN_CODEC", f"cannot decompress the {encoding} request body: {exc}"
        ) from None
    raise SqlError(
        432, "UNKNOWN_CODEC",
        f"unsupported Content-Encoding {encoding[:40]!r}; use gzip, deflate, lz4, zstd or none",
    )


class _Decompressor(Protocol):
    """One frame or stream at a time: lz4.frame's and zlib's decompressors alike."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, /) -> bytes: ...


def _every_part(body: bytes, new_part: Callable[[], _Decompressor], unit: str) -> bytes:
    """Every frame (or stream) of the body, concatenated. clickhouse-connect compresses each
    block of an insert as an lz4 frame of its own, and `lz4.frame.decompress` (as
    `zlib.decompress`) stops after the first and drops the rest without a word: an insert of
    more than one block (16,384 rows of 200 bytes) lost all but its first block."""
    parts: list[bytes] = []
    rest = body
    while rest:
        part = new_part()
        parts.append(part.decompress(rest))
        if not part.eof:
            raise ValueError(f"the last {unit} is cut short ({len(rest)} bytes from its start)")
        rest = part.unused_data
    return b"".join(parts)
