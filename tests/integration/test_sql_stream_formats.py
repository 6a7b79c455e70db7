"""The *WithNames(AndTypes) formats stream: the same bytes as the engine's whole answer.

Differential: each format's result of several blocks, streamed (the header each block repeats
cut), against the same query with `wait_end_of_query=1`, which the endpoint answers with the
engine's whole answer. Column names hold a newline and a quote, which CSV writes inside quotes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from steplog.server.sql_stream_names import NAMED_FORMATS
from tests.conftest import isolated_settings
from tests.integration.sql_endpoint_server import Endpoint, http, serving

ROWS = ("SELECT number AS `a\nb`, toString(number) AS `q\"x`, [number, 1] AS `arr` "
        "FROM numbers({n:UInt32})")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str) -> Iterator[Endpoint]:
    """One endpoint for every format here; the queries read no table of a test database, and
    the endpoint speaks to no broker (hence no address of one)."""
    settings = isolated_settings("127.0.0.1:1", clickhouse_dsn,
                                 tmp_path_factory.mktemp("formats") / "steplog")
    with serving(settings) as served:
        yield served


@pytest.mark.parametrize("fmt, rows", [
    *((fmt, 5) for fmt in sorted(NAMED_FORMATS)),  # 3 blocks
    ("CSVWithNamesAndTypes", 0), ("RowBinaryWithNames", 0),  # no block: the header alone
])
def test_a_named_format_streams_the_engines_bytes(endpoint: Endpoint, fmt: str,
                                                  rows: int) -> None:
    params = {"query": ROWS, "param_n": str(rows), "default_format": fmt,
              "max_block_size": "2", "database": "system"}
    streamed = http(endpoint.url, key=endpoint.keys.read, params=params)
    whole = http(endpoint.url, key=endpoint.keys.read,
                 params={**params, "wait_end_of_query": "1"})
    assert streamed.status == whole.status == 200, streamed.body
    assert "X-ClickHouse-Exception-Tag" in streamed.headers  # it was streamed
    assert streamed.body == whole.body and (rows == 0 or "3" in streamed.body)
