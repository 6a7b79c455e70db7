"""A SQL request's body read as a stream: decoded as it arrives, held on disk past a little.

ClickHouse streams a request's body: an INSERT's rows go to the table as they come, and an
external table's file part is read part by part. Here the body is read chunk by chunk from
the socket (aiohttp pauses the client while a chunk waits), its `Content-Encoding` undone
(sql_compression.BodyDecoder), then ClickHouse's compressed blocks (`decompress=1`,
sql_blocks.BlockReader), each piece at most about a MiB; what is kept goes to a `Spool`: in
memory up to `_IN_MEMORY` bytes, past it in an anonymous temporary file. So the endpoint's
memory does not grow with the body; its size is bounded by STEPLOG_SQL_MAX_BODY_MB, decoded
(BodyTooLarge, 413, once it passes: a few KiB of gzip can decode to gigabytes).

Failure protocol: a spool's file has no name (O_TMPFILE, or unlinked at once: tempfile's
TemporaryFile), so the kernel frees it when it is closed or when the process dies, whatever
happens in between; whoever holds a spool closes it when the query no longer needs it
(sql_http: once its start on the worker has ended, however it ended).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Final

from steplog.server.sql_blocks import BlockReader
from steplog.server.sql_compression import BodyDecoder, BodyTooLarge
from steplog.server.sql_errors import SqlError

__all__ = ["CHUNK_BYTES", "MAX_TEXT_BYTES", "Spool", "decoded_body"]

CHUNK_BYTES: Final = 256 * 1024
"""What a spool hands the engine at a time: chDB's send_insert holds about a few times each
chunk it is given (measured on chDB 4.4: 4 MiB chunks grew the process by 120 MiB, 256 KiB
ones by under 40 MiB, a 1 GiB CSV included)."""
MAX_TEXT_BYTES: Final = 256 * 1024 * 1024
"""The most of a body read as text (a query, a form field): text is held in memory whole."""
_IN_MEMORY: Final = 1024 * 1024
"""A spool stays in memory up to this (most bodies: a query, a few rows), then moves to disk."""


class Spool:
    """Bytes written once, then read as often as needed; in memory while small, else in an
    anonymous temporary file. Not thread-safe: written on the event loop, read after on a
    worker, one at a time."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.seek(0, 2)
        self._file.write(data)
        self.size += len(data)

    def read(self, start: int = 0, length: int | None = None) -> bytes:
        """`length` bytes from `start` (all of the rest if None)."""
        self._file.seek(start)
        return self._file.read(-1 if length is None else length)

    def text(self, what: str) -> str:
        """The whole spool as UTF-8 text (it is then in memory): SqlError naming `what` when
        it is larger than MAX_TEXT_BYTES or not UTF-8."""
        if self.size > MAX_TEXT_BYTES:
            raise SqlError(229, "QUERY_IS_TOO_LARGE",
                           f"{what} is {self.size} bytes, more than the {MAX_TEXT_BYTES} read as "
                           "text; rows go after an INSERT's statement (or in an external table), "
                           "where they are streamed")
        data = self.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SqlError(
                62, "SYNTAX_ERROR",
                f"{what} is not UTF-8 (byte {exc.start}); binary data goes in the body of an "
                "INSERT whose statement is in the `query` parameter, or in an external table",
            ) from None

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        """The bytes from `start` on, CHUNK_BYTES at a time (what is fed to the engine)."""
        at = start
        while at < self.size:
            chunk = self.read(at, CHUNK_BYTES)
            at += len(chunk)
            yield chunk

    def close(self) -> None:
        """Free it (its file, if it has one, is gone with it). Idempotent."""
        self._file.close()


async def decoded_body(received: AsyncIterable[bytes], encoding: str, blocks: bool,
                       limit: int) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive, its Content-Encoding (`encoding`) undone, then
    ClickHouse's compressed blocks if `blocks` (`decompress=1`); BodyTooLarge once more than
    `limit` bytes have come out; SqlError when the body is not what it says it is."""
    decoder = BodyDecoder(encoding)
    reader = BlockReader() if blocks else None
    total = 0
    async for chunk in received:
        for piece in decoder.feed(chunk):
            for data in reader.feed(piece) if reader else (piece,):
                total += len(data)
                if total > limit:
                    raise BodyTooLarge(limit)
                yield data
    decoder.end()
    if reader:
        reader.end()
