"""ClickHouse's compressed blocks (compress=1 / decompress=1), read and written."""

from __future__ import annotations

import pytest

from steplog.server.sql_blocks import BlockWriter, Method, read_blocks
from steplog.server.sql_errors import SqlError

# Written by the engine itself (chDB 4.4): the .bin files of a TinyLog table
# `(l String CODEC(LZ4), z String CODEC(ZSTD(1)))` holding three rows of 'steplog'.
ENGINE_LZ4 = bytes.fromhex(
    "4e70af22ae3967ce02908dcd61654b3f821a000000180000008707737465706c6f6708005065706c6f67")
ENGINE_ZSTD = bytes.fromhex(
    "c3ac9cc23c4054d2bec26287b76c3b2090200000001800000028b52ffd20187500004007737465706c6f67"
    "0100430a17")
ROWS = b"\x07steplog" * 3


@pytest.mark.parametrize("block", [ENGINE_LZ4, ENGINE_ZSTD], ids=["lz4", "zstd"])
def test_blocks_the_engine_wrote_are_read(block: bytes) -> None:
    assert read_blocks(block, 1024) == ROWS


@pytest.mark.parametrize("method", list(Method))
def test_written_blocks_read_back_and_split_at_a_mebibyte(method: Method) -> None:
    data = bytes(range(256)) * 5000  # 1.2 MiB: two blocks
    written = BlockWriter(method).write(data)
    assert read_blocks(written, len(data)) == data
    assert written[16] == method
    if method is Method.LZ4:  # the writer agrees with the engine byte for byte
        assert BlockWriter(method).write(ROWS) == ENGINE_LZ4


def test_a_corrupted_block_is_refused_by_its_checksum() -> None:
    damaged = ENGINE_LZ4[:-1] + b"\x00"
    with pytest.raises(SqlError) as refused:
        read_blocks(damaged, 1024)
    assert refused.value.code == 40


@pytest.mark.parametrize("data, code", [
    (ENGINE_LZ4[:20], 271),  # cut inside the header
    (ENGINE_LZ4[:-3], 271),  # cut inside the data
    (ENGINE_LZ4 + ENGINE_LZ4, 290),  # more than the limit of one block's rows
])
def test_short_or_oversized_bodies_are_refused(data: bytes, code: int) -> None:
    with pytest.raises(SqlError) as refused:
        read_blocks(data, len(ROWS))
    assert refused.value.code == code
