"""The SQL endpoint (ClickHouse's HTTP interface over the embedded engine), in this process.

The endpoint serves the session's chDB engine, which this pytest process owns
(tests/integration/sql_endpoint_server.py). It is spoken to the way analysts do: with plain
HTTP (what curl sends) and with clickhouse-connect's own HTTP client, logged in with a key
(the admin key where the test writes). Its refusals: test_sql_security.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from steplog.settings import Settings
from tests.integration.sql_endpoint_server import Endpoint, http, serving


@pytest.fixture
def endpoint(settings: Settings, clickhouse: Client) -> Iterator[Endpoint]:
    database = settings.clickhouse_database
    clickhouse.command(
        f"CREATE TABLE {database}.pets (id Int32, name String) ENGINE = MergeTree ORDER BY id"
    )
    clickhouse.command(f"INSERT INTO {database}.pets VALUES (1, 'ada'), (2, 'bob')")
    with serving(settings) as served:
        yield served


def select_pets(endpoint: Endpoint) -> list[tuple[int, str]]:
    answer = http(endpoint.url, key=endpoint.keys.admin, params={
        "query": f"SELECT id, name FROM {endpoint.database}.pets ORDER BY id FORMAT JSONEachRow"
    })
    assert answer.status == 200, answer.body
    return [(row["id"], row["name"]) for row in map(json.loads, answer.body.splitlines())]


def test_queries_over_plain_http(endpoint: Endpoint) -> None:
    got = http(endpoint.url, key=endpoint.keys.admin, params={"query": "SELECT 1"})
    assert (got.status, got.body) == (200, "1\n")
    assert got.headers["X-ClickHouse-Format"] == "TabSeparated"

    posted = http(endpoint.url, key=endpoint.keys.admin, body=b"SELECT 2 + 3")
    assert (posted.status, posted.body) == (200, "5\n")

    each_row = http(endpoint.url, key=endpoint.keys.admin,
                    body=b"SELECT 7 AS n, 'x' AS s FORMAT JSONEachRow")
    assert each_row.status == 200, each_row.body
    assert json.loads(each_row.body) == {"n": 7, "s": "x"}

    as_csv = http(endpoint.url, key=endpoint.keys.admin, params={"default_format": "CSV"},
                  body=b"SELECT number AS a, repeat('x', number) AS b FROM numbers(1, 2)")
    assert as_csv.status == 200, as_csv.body
    assert list(csv.reader(io.StringIO(as_csv.body))) == [["1", "x"], ["2", "xx"]]
    assert as_csv.headers["Content-Type"].startswith("text/csv")

    unqualified = http(endpoint.url, key=endpoint.keys.admin, params={
        "database": endpoint.database, "query": "SELECT name FROM pets ORDER BY id"
    })
    assert (unqualified.status, unqualified.body) == (200, "ada\nbob\n")

    bound = http(endpoint.url, key=endpoint.keys.admin, params={
        "query": "SELECT {x:Int32} * 2, {s:String}", "param_x": "21", "param_s": "it's"
    })
    assert (bound.status, bound.body) == (200, "42\tit\\'s\n")

    with_setting = http(endpoint.url, key=endpoint.keys.admin, params={
        "query": "SELECT value FROM system.settings WHERE name = 'max_threads'",
        "max_threads": "1",  # lowered: a request may not raise a max_* setting
    })
    assert (with_setting.status, with_setting.body) == (200, "1\n")

    ping = http(endpoint.url, key=endpoint.keys.admin, path="/ping")
    assert (ping.status, ping.body) == (200, "Ok.\n")


def test_inserts_over_plain_http(endpoint: Endpoint) -> None:
    in_body = http(
        endpoint.url,
        key=endpoint.keys.admin,
        params={"query": f"INSERT INTO {endpoint.database}.pets FORMAT TabSeparated"},
        body=b"3\tcid\n4\tdot\n",
    )
    assert in_body.status == 200, in_body.body

    after_query = http(
        endpoint.url,
        key=endpoint.keys.admin,
        params={"database": endpoint.database},
        body=b'INSERT INTO pets (id, name) FORMAT JSONEachRow\n{"id": 5, "name": "eve"}\n',
    )
    assert after_query.status == 200, after_query.body

    compressed = http(
        endpoint.url,
        key=endpoint.keys.admin,
        params={"database": endpoint.database},
        body=gzip.compress(b"INSERT INTO pets FORMAT CSV\n6,\"fay\"\n"),
        headers={"Content-Encoding": "gzip"},
    )
    assert compressed.status == 200, compressed.body

    values_continued = http(
        endpoint.url,
        key=endpoint.keys.admin,
        params={"query": f"INSERT INTO {endpoint.database}.pets VALUES"},
        body=b"(7, 'gus')",
    )
    assert values_continued.status == 200, values_continued.body
    values_inline = http(endpoint.url, key=endpoint.keys.admin,
                         params={"database": endpoint.database},
                         body=b"INSERT INTO pets VALUES (8, 'hal')")
    assert values_inline.status == 200, values_inline.body

    gzip_query = http(
        endpoint.url,
        key=endpoint.keys.admin,
        body=gzip.compress(f"SELECT count() FROM {endpoint.database}.pets".encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert (gzip_query.status, gzip_query.body) == (200, "8\n")

    assert select_pets(endpoint) == [
        (1, "ada"), (2, "bob"), (3, "cid"), (4, "dot"), (5, "eve"), (6, "fay"), (7, "gus"),
        (8, "hal"),
    ]


def test_errors_look_like_clickhouse(endpoint: Endpoint) -> None:
    syntax = http(endpoint.url, key=endpoint.keys.admin, body=b"SELEKT 1")
    assert syntax.status == 400, syntax.body
    assert syntax.headers["X-ClickHouse-Exception-Code"] == "62"
    assert syntax.body.startswith("Code: 62. DB::Exception"), syntax.body

    unknown_identifier = http(endpoint.url, key=endpoint.keys.admin, body=b"SELECT nope")
    assert unknown_identifier.status == 404, unknown_identifier.body
    assert unknown_identifier.headers["X-ClickHouse-Exception-Code"] == "47"

    missing = http(endpoint.url, key=endpoint.keys.admin,
                   params={"query": f"SELECT * FROM {endpoint.database}.nope"})
    assert missing.status == 404, missing.body
    assert missing.headers["X-ClickHouse-Exception-Code"] == "60"
    assert missing.body.startswith("Code: 60. DB::Exception"), missing.body

    bad_data = http(
        endpoint.url,
        key=endpoint.keys.admin,
        params={"query": f"INSERT INTO {endpoint.database}.pets FORMAT TabSeparated"},
        body=b"not-a-number\tzed\n",
    )
    assert bad_data.status >= 400 and bad_data.body.startswith("Code: "), bad_data.body
    assert bad_data.headers["X-ClickHouse-Exception-Code"] == bad_data.body.split(".")[0][6:]

    bad_encoding = http(endpoint.url, key=endpoint.keys.admin, body=b"SELECT 1",
                        headers={"Content-Encoding": "gzip"})
    assert bad_encoding.status == 400, bad_encoding.body
    assert bad_encoding.body.startswith("Code: 432."), bad_encoding.body

    # The endpoint keeps serving after errors.
    assert http(endpoint.url, key=endpoint.keys.admin, params={"query": "SELECT 1"}).body == "1\n"


@pytest.mark.parametrize("compress", [True, "zstd", "gzip", False])
def test_clickhouse_connect_inserts_however_it_compresses(
    endpoint: Endpoint, compress: bool | str
) -> None:
    # True is clickhouse-connect's default: lz4.
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=endpoint.port, database=endpoint.database,
        password=endpoint.keys.admin, compress=compress
    )
    # Rows enough for several blocks: clickhouse-connect compresses each block apart (with lz4,
    # a frame each), and every one of them must arrive.
    rows = [[20 + i, f"pet{i:06d}" + "x" * 200] for i in range(40_000)]
    try:
        client.insert("pets", rows, column_names=["id", "name"])
        assert client.query(
            "SELECT count(), min(id), max(id) FROM pets WHERE id >= 20"
        ).result_rows == [(40_000, 20, 40_019)]
    finally:
        client.close()


def test_clickhouse_connect_http_client(endpoint: Endpoint) -> None:
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=endpoint.port, database=endpoint.database,
        password=endpoint.keys.admin
    )
    try:
        rows = client.query(
            "SELECT id, name FROM pets WHERE id >= {low:Int32} ORDER BY id", parameters={"low": 2}
        ).result_rows
        assert rows == [(2, "bob")]
        client_side = client.query(
            "SELECT name FROM pets WHERE name = %(name)s", parameters={"name": "ada"}
        ).result_rows
        assert client_side == [("ada",)]

        client.insert("pets", [[10, "kit"], [11, "lou"]], column_names=["id", "name"])
        assert client.command("SELECT count() FROM pets") == 4
        client.command("CREATE TABLE notes (k String) ENGINE = MergeTree ORDER BY k")
        client.insert("notes", [["a"], ["b"]], column_names=["k"])
        assert client.query("SELECT groupArray(k) FROM notes").result_rows == [(["a", "b"],)]
        assert client.command("SELECT version()")
    finally:
        client.close()
    assert select_pets(endpoint)[-2:] == [(10, "kit"), (11, "lou")]
