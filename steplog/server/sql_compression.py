"""HTTP compression both ways: request bodies as clients compress them (`Content-Encoding`),
decoded whole, and responses compressed as they stream out (`enable_http_compression=1` with
`Accept-Encoding`, as in ClickHouse).

aiohttp knows neither lz4 nor ClickHouse's error format, so the SQL endpoint runs with
aiohttp's own request decompression off and decodes here. Issue 19 adds ClickHouse's own
compressed-block framing (`compress=1`/`decompress=1`).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from steplog.server.sql_errors import SqlError

__all__ = ["MAX_BODY_BYTES", "Encoder", "decompress", "response_encoder", "zstd_module"]

MAX_BODY_BYTES: Final = 256 * 1024 * 1024
"""The largest request body, decoded (ClickHouse's http_max_multipart_form_data_size is 1 GiB;
the endpoint holds a body whole in memory, so less)."""

# ClickHouse's order of preference (chooseHTTPCompressionMethod), of those encoded here (brotli
# is not installed: a client asking only `br` gets an uncompressed answer, as from a server
# built without it).
_PREFERENCE: Final = ("zstd", "lz4", "gzip", "deflate")
_ZLIB_LEVEL: Final = 3  # ClickHouse's http_zlib_compression_level default


def decompress(encoding: str, body: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body without its Content-Encoding (clickhouse-connect sends lz4 or zstd),
    never more than `limit` bytes of it: a few KiB of gzip can decode to gigabytes, so the
    decoders stop at the limit rather than after it (LIMIT_EXCEEDED)."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            if len(body) > limit:
                raise _too_large(limit)
            return body
        if encoding == "gzip":  # one member after the other, as gzip.decompress reads them
            return _every_part(body, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), "member",
                               limit)
        if encoding == "deflate":
            return _every_part(body, zlib.decompressobj, "stream", limit)
        if encoding == "lz4":
            import lz4.frame  # clickhouse-connect's own dependency

            return _every_part(body, lz4.frame.LZ4FrameDecompressor, "frame", limit)
        if encoding == "zstd":
            return _every_part(body, zstd_module().ZstdDecompressor, "frame", limit)
    except SqlError:
        raise
    except Exception as exc:
        raise SqlError(
            432, "UNKNOWN_CODEC", f"cannot decompress the {encoding} request body: {exc}"
        ) from None
    raise SqlError(
        432, "UNKNOWN_CODEC",
        f"unsupported Content-Encoding {encoding[:40]!r}; use gzip, deflate, lz4, zstd or none",
    )


class _Decompressor(Protocol):
    """One frame or stream at a time: zlib's, lz4.frame's and zstd's decompressors alike."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def _every_part(
    body: bytes, new_part: Callable[[], _Decompressor], unit: str, limit: int
) -> bytes:
    """Every frame (or stream) of the body, concatenated. clickhouse-connect compresses each
    block of an insert as an lz4 frame of its own, and `lz4.frame.decompress` (as
    `zlib.decompress`) stops after the first and drops the rest without a word: an insert of
    more than one block (16,384 rows of 200 bytes) lost all but its first block.

    Each part is decoded to at most one byte past what is left of `limit`: reaching that byte
    is the refusal, so a part whose output was cut by the cap is never mistaken for whole."""
    out = bytearray()
    rest = body
    while rest:
        part = new_part()
        out += part.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise _too_large(limit)
        if not part.eof:
            raise ValueError(f"the last {unit} is cut short ({len(rest)} bytes from its start)")
        rest = part.unused_data
    return bytes(out)


def _too_large(limit: int) -> SqlError:
    return SqlError(290, "LIMIT_EXCEEDED",
                    f"the request body is larger than the endpoint's maximum of {limit} bytes")


class Encoder(Protocol):
    """A response body's compression, one chunk at a time. `compress(chunk)` returns all of
    the chunk's compressed bytes at once (flushed: a client decodes what it has received so far,
    which matters when blocks come slowly); `flush()` ends the stream and is called once, last."""

    @property
    def content_encoding(self) -> str: ...
    def compress(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Exchange(Protocol):
    """What of an HTTP request decides its response's compression (an aiohttp request is one)."""

    @property
    def query(self) -> Mapping[str, str]: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


def response_encoder(request: _Exchange) -> Encoder | None:
    """The encoder the response gets, or None (uncompressed): only when the URL has
    `enable_http_compression=1` (ClickHouse's default is off) and `Accept-Encoding` names a
    method encoded here; `http_zlib_compression_level` sets gzip's and deflate's level."""
    if request.query.get("enable_http_compression", "0").strip().lower() not in ("1", "true"):
        return None
    accepted = _accepted(request.headers.get("Accept-Encoding", ""))
    chosen = next((method for method in _PREFERENCE if method in accepted), None)
    if chosen is None:
        return None
    if chosen in ("gzip", "deflate"):
        level = request.query.get("http_zlib_compression_level", str(_ZLIB_LEVEL))
        if not level.isdigit() or not 1 <= int(level) <= 9:
            raise SqlError(36, "BAD_ARGUMENTS",
                           f"http_zlib_compression_level must be 1 to 9, got {level[:20]!r}")
        return _ZlibEncoder(chosen, int(level))
    return _Lz4Encoder() if chosen == "lz4" else _ZstdEncoder()


def _accepted(header: str) -> set[str]:
    """The methods of an Accept-Encoding header that it does not refuse with `q=0`."""
    methods = set()
    for item in header.lower().split(","):
        method, _, quality = item.partition(";")
        if quality.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            methods.add(method.strip())
    return methods


class _ZlibEncoder:
    def __init__(self, method: str, level: int) -> None:
        self.content_encoding = method
        # gzip: the gzip wrapper (RFC 1952); HTTP's deflate is the zlib wrapper (RFC 1950).
        wbits = 16 + zlib.MAX_WBITS if method == "gzip" else zlib.MAX_WBITS
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def compress(self, chunk: bytes) -> bytes:
        return self._compressor.compress(chunk) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def flush(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


class _Lz4Encoder:
    content_encoding = "lz4"

    def __init__(self) -> None:
        import lz4.frame  # clickhouse-connect's own dependency

        self._compressor = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        self._header: bytes | None = self._compressor.begin()

    def compress(self, chunk: bytes) -> bytes:
        header, self._header = self._header or b"", None
        return header + bytes(self._compressor.compress(chunk))

    def flush(self) -> bytes:
        header, self._header = self._header or b"", None
        return header + bytes(self._compressor.flush())


class _ZstdEncoder:
    content_encoding = "zstd"

    def __init__(self) -> None:
        self._compressor = zstd_module().ZstdCompressor()

    def compress(self, chunk: bytes) -> bytes:
        zstd = zstd_module()
        return bytes(self._compressor.compress(chunk, zstd.ZstdCompressor.FLUSH_BLOCK))

    def flush(self) -> bytes:
        return bytes(self._compressor.flush(zstd_module().ZstdCompressor.FLUSH_FRAME))


def zstd_module() -> Any:
    """clickhouse-connect's own zstd: the standard library's from Python 3.14, the backport
    before (the `zstandard` package is not installed with it)."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd
