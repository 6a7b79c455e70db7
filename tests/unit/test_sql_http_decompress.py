"""Request bodies as clients compress them: several frames, one after the other."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame
import pytest

from steplog.server.sql_compression import decompress
from steplog.server.sql_errors import SqlError


def test_every_lz4_frame_is_read() -> None:
    # clickhouse-connect compresses each block of an insert as a frame of its own.
    blocks = [bytes([n]) * 70_000 for n in range(3)]
    body = b"".join(lz4.frame.compress(block) for block in blocks)
    assert decompress("lz4", body) == b"".join(blocks)


def test_a_cut_lz4_frame_is_an_error_not_a_shorter_body() -> None:
    body = lz4.frame.compress(b"a" * 1000) + lz4.frame.compress(b"b" * 1000)[:-6]
    with pytest.raises(SqlError, match=r"cut short") as refused:
        decompress("lz4", body)
    assert refused.value.code == 432 and refused.value.body().startswith("Code: 432.")


def test_every_gzip_member_is_read() -> None:
    assert decompress("gzip", gzip.compress(b"abc") + gzip.compress(b"def")) == b"abcdef"


def test_every_deflate_stream_is_read_and_a_cut_one_is_an_error() -> None:
    assert decompress("deflate", zlib.compress(b"abc") + zlib.compress(b"def")) == b"abcdef"
    with pytest.raises(SqlError, match=r"cut short"):
        decompress("deflate", zlib.compress(b"abc" * 100)[:-3])
