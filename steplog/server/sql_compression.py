"""HTTP compression both ways: request bodies as clients compress them (`Content-Encoding`),
decoded as they arrive, and responses compressed as they stream out
(`enable_http_compression=1` with `Accept-Encoding`, as in ClickHouse).

aiohttp knows neither lz4 nor ClickHouse's error format, so the SQL endpoint runs with
aiohttp's own request decompression off and decodes here. Issue 19 adds ClickHouse's own
compressed-block framing (`compress=1`/`decompress=1`).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol

from steplog.server.sql_errors import SqlError

__all__ = ["BodyDecoder", "BodyTooLarge", "Encoder", "decompress", "response_encoder",
           "zstd_module"]

MAX_DECODED_PIECE: Final = 1024 * 1024
"""The most one step of a decoder yields: a few KiB of gzip can decode to gigabytes, so a
body is decoded in pieces of at most this, and its reader stops at its limit (BodyTooLarge)
after at most one piece more than it."""

# ClickHouse's order of preference (chooseHTTPCompressionMethod), of those encoded here (brotli
# is not installed: a client asking only `br` gets an uncompressed answer, as from a server
# built without it).
_PREFERENCE: Final = ("zstd", "lz4", "gzip", "deflate")
_ZLIB_LEVEL: Final = 3  # ClickHouse's http_zlib_compression_level default


class BodyTooLarge(SqlError):
    """A request body past the endpoint's limit: ClickHouse's LIMIT_EXCEEDED (290), answered
    413 (Payload Too Large) rather than 400, naming the setting that raises the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(290, "LIMIT_EXCEEDED",
                         f"the request body is larger than the endpoint's maximum of {limit} "
                         "bytes (decoded); STEPLOG_SQL_MAX_BODY_MB sets it")

    @property
    def status(self) -> int:
        return 413


class _Decompressor(Protocol):
    """One frame or stream at a time, as lz4.frame's and zstd's decompressors are: past
    `max_length` the input is kept, and `needs_input` is False until it has been decoded."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...
    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class _ZlibStream:
    """zlib's decompressor with lz4's and zstd's `needs_input` (zlib hands back the input it
    could not take as `unconsumed_tail` instead of keeping it)."""

    def __init__(self, wbits: int) -> None:
        self._zlib = zlib.decompressobj(wbits)
        self._tail = b""
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    @property
    def unused_data(self) -> bytes:
        return self._zlib.unused_data

    def decompress(self, data: bytes, max_length: int, /) -> bytes:
        out = self._zlib.decompress(self._tail + data, max_length)
        self._tail = self._zlib.unconsumed_tail
        # A full answer may leave output inside zlib even with no input left: ask again.
        self.needs_input = not self._tail and len(out) < max_length
        return out


def _decompressor_for(encoding: str) -> Callable[[], _Decompressor] | None:
    """A new decoder of one frame (stream, member) of `encoding`; None for no encoding.
    SqlError (UNKNOWN_CODEC) for one not decoded here."""
    if encoding in ("", "identity"):
        return None
    if encoding == "gzip":
        return lambda: _ZlibStream(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: _ZlibStream(zlib.MAX_WBITS)
    if encoding == "lz4":
        import lz4.frame  # clickhouse-connect's own dependency

        return lambda: lz4.frame.LZ4FrameDecompressor()
    if encoding == "zstd":
        return lambda: zstd_module().ZstdDecompressor()
    raise SqlError(
        432, "UNKNOWN_CODEC",
        f"unsupported Content-Encoding {encoding[:40]!r}; use gzip, deflate, lz4, zstd or none",
    )


class BodyDecoder:
    """A request body's Content-Encoding undone as its bytes arrive: `feed` each chunk
    received, then `end` once. Every frame is read, one after the other: clickhouse-connect
    compresses each block of an insert as an lz4 frame of its own, and `lz4.frame.decompress`
    (as `zlib.decompress`) stops after the first and drops the rest without a word."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding.strip().lower()
        self._new = _decompressor_for(self.encoding)
        self._part: _Decompressor | None = None
        self._received = 0  # bytes of the current part, for the error's message

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of `data`, in pieces of at most MAX_DECODED_PIECE (a chunk of
        a compression bomb never decodes whole). SqlError (UNKNOWN_CODEC) when it is not
        `encoding`."""
        if self._new is None:
            if data:
                yield data
            return
        try:
            while data or (self._part is not None and not self._part.needs_input):
                if self._part is None:
                    self._part, self._received = self._new(), 0
                self._received += len(data)
                out = self._part.decompress(data, MAX_DECODED_PIECE)
                data = b""
                if self._part.eof:  # the next frame starts in what this one left
                    data, self._part = self._part.unused_data, None
                if out:
                    yield out
        except SqlError:
            raise
        except Exception as exc:
            raise self._error(str(exc)) from None

    def end(self) -> None:
        """The body has ended: SqlError if it ends inside a frame."""
        if self._part is not None:
            raise self._error(f"the last frame is cut short ({self._received} bytes from its "
                              "start)")

    def _error(self, what: str) -> SqlError:
        return SqlError(432, "UNKNOWN_CODEC",
                        f"cannot decompress the {self.encoding} request body: {what}")


def decompress(encoding: str, body: bytes, limit: int | None = None) -> bytes:
    """A whole body at once (BodyDecoder, with BodyTooLarge past `limit` if given): for a
    body that is already in memory, such as a test's."""
    decoder = BodyDecoder(encoding)
    out = bytearray()
    for piece in decoder.feed(body):
        out += piece
        if limit is not None and len(out) > limit:
            raise BodyTooLarge(limit)
    decoder.end()
    return bytes(out)


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
