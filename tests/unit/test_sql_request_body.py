"""Request bodies read as they arrive: decoded in pieces, bounded, spooled past a MiB."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import lz4.frame
import pytest

from steplog.server.sql_blocks import BlockWriter
from steplog.server.sql_body import CHUNK_BYTES, Spool, decoded_body
from steplog.server.sql_compression import MAX_DECODED_PIECE, BodyTooLarge
from steplog.server.sql_errors import SqlError


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(body), size):
        yield body[at:at + size]


def decoded(body: bytes, encoding: str = "", *, blocks: bool = False, limit: int = 1 << 30,
            size: int = 7) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [piece async for piece in decoded_body(pieces(body, size), encoding, blocks,
                                                      limit)]
    return asyncio.run(collect())


ROWS = b"".join(b"%d,row %d\n" % (n, n) for n in range(20_000))


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gzip.compress(ROWS[:1000]) + gzip.compress(ROWS[1000:])),
    ("lz4", lz4.frame.compress(ROWS[:5000]) + lz4.frame.compress(ROWS[5000:])),
    ("", ROWS),
])
def test_every_frame_is_decoded_from_pieces_of_a_few_bytes(encoding: str, body: bytes) -> None:
    assert b"".join(decoded(body, encoding)) == ROWS


def test_compressed_blocks_inside_http_compression_are_read_across_pieces() -> None:
    body = gzip.compress(BlockWriter().write(ROWS) + BlockWriter().write(b"tail"))
    assert b"".join(decoded(body, "gzip", blocks=True, size=100)) == ROWS + b"tail"


def test_a_body_cut_inside_a_frame_or_block_is_an_error() -> None:
    with pytest.raises(SqlError, match="cut short"):
        decoded(lz4.frame.compress(ROWS)[:-5], "lz4")
    with pytest.raises(SqlError, match="cut short") as refused:
        decoded(BlockWriter().write(ROWS)[:-5], blocks=True)
    assert refused.value.code == 271


def test_a_bomb_stops_at_the_limit_in_bounded_pieces_with_413_naming_the_setting() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB from 64 KiB
    seen: list[int] = []

    async def read() -> None:
        async for piece in decoded_body(pieces(bomb, 1 << 16), "gzip", False, 8 << 20):
            seen.append(len(piece))

    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(read())
    assert max(seen) <= MAX_DECODED_PIECE and sum(seen) <= 8 << 20
    assert (refused.value.status, refused.value.code) == (413, 290)
    assert "STEPLOG_SQL_MAX_BODY_MB" in refused.value.body()


def test_a_spool_reads_back_in_chunks_and_as_text() -> None:
    spool = Spool()
    try:
        data = ROWS * 10  # past what stays in memory
        for at in range(0, len(data), 65536):
            spool.write(data[at:at + 65536])
        chunks = list(spool.chunks(5))
        assert b"".join(chunks) == data[5:] and max(map(len, chunks)) == CHUNK_BYTES
        assert spool.text("the query") == data.decode()
    finally:
        spool.close()
    invalid = Spool()
    invalid.write(b"SELECT '\xff'")
    with pytest.raises(SqlError, match=r"the query is not UTF-8 \(byte 8\)"):
        invalid.text("the query")
    invalid.close()
