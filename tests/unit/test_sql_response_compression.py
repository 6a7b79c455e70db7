"""Responses compressed as ClickHouse does (`enable_http_compression=1` + `Accept-Encoding`),
chunk by chunk, each chunk decodable as soon as it arrives; request bodies decoded no further
than the endpoint's limit."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import lz4.frame
import pytest
from clickhouse_connect.driver._backend.httpcommon import decompress_response

from steplog.server.sql_compression import decompress, response_encoder
from steplog.server.sql_errors import SqlError


@dataclass
class Exchange:
    accept: str
    query: dict[str, str] = field(default_factory=lambda: {"enable_http_compression": "1"})

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": self.accept}


CHUNKS = [b"%d\tpet%d\n" % (n, n) * 500 for n in range(5)]


@pytest.mark.parametrize("method", ["gzip", "deflate", "lz4", "zstd"])
def test_each_method_streams_what_clients_decode(method: str) -> None:
    encoder = response_encoder(Exchange(method))
    assert encoder is not None and encoder.content_encoding == method
    body = b"".join(encoder.compress(chunk) for chunk in CHUNKS) + encoder.flush()
    # clickhouse-connect's own decoding (its whole-body lz4 path caps the output at the input's
    # length, so lz4 is read the way its streaming path reads it: as frames).
    decoded = lz4.frame.decompress(body) if method == "lz4" else decompress_response(body, method)
    assert decoded == b"".join(CHUNKS)
    assert len(body) < len(b"".join(CHUNKS)) / 5


def test_a_chunk_decodes_before_the_stream_ends() -> None:
    encoder = response_encoder(Exchange("gzip"))
    assert encoder is not None
    first = encoder.compress(CHUNKS[0])
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first) == CHUNKS[0]


@pytest.mark.parametrize(("accept", "query", "chosen"), [
    ("gzip, deflate, br, zstd", {"enable_http_compression": "1"}, "zstd"),  # ClickHouse's order
    ("gzip;q=0, deflate", {"enable_http_compression": "1"}, "deflate"),
    ("br", {"enable_http_compression": "1"}, None),  # not installed: uncompressed
    ("gzip", {}, None),  # off unless asked, as in ClickHouse
    ("gzip", {"enable_http_compression": "0"}, None),
    ("", {"enable_http_compression": "1"}, None),
])
def test_the_method_is_chosen_as_clickhouse_chooses(
    accept: str, query: dict[str, str], chosen: str | None
) -> None:
    encoder = response_encoder(Exchange(accept, query))
    assert (encoder.content_encoding if encoder else None) == chosen


def test_the_zlib_level_is_checked() -> None:
    with pytest.raises(SqlError, match="http_zlib_compression_level"):
        response_encoder(Exchange("gzip", {"enable_http_compression": "1",
                                           "http_zlib_compression_level": "11"}))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "lz4", "zstd"])
def test_a_request_body_stops_decoding_at_the_limit(encoding: str) -> None:
    encoder = response_encoder(Exchange(encoding))
    assert encoder is not None
    bomb = encoder.compress(b"\0" * 1_000_000) + encoder.flush()
    assert decompress(encoding, bomb, limit=1_000_000) == b"\0" * 1_000_000
    with pytest.raises(SqlError, match="larger than the endpoint's maximum of 999999") as refused:
        decompress(encoding, bomb, limit=999_999)
    assert refused.value.code == 290


def test_a_plain_request_body_is_bounded_too() -> None:
    assert decompress("", b"12345", limit=5) == b"12345"
    with pytest.raises(SqlError, match="maximum of 4 bytes"):
        decompress("identity", b"12345", limit=4)
