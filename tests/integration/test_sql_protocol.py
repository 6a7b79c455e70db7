"""The SQL endpoint's protocol details (issue 19): ClickHouse's compressed blocks both ways,
Native for a client's protocol revision, response headers, HTTP compression, kept sessions.

Raw HTTP where the bytes are the point, clickhouse-connect (with its compression on) where a
real client is.
"""

from __future__ import annotations

import gzip
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from steplog.server.sql_blocks import BlockWriter, Method, read_blocks
from steplog.settings import Settings
from tests.integration.sql_endpoint_server import Endpoint, basic, serving

# One row of each kind of column the Native walk knows, and a few of each kind of container.
WIDE = """SELECT number AS u64, toInt8(number) - 3 AS i8, number / 3 AS f64,
    repeat('x', number * 50) AS s, toFixedString('ab', 2) AS fs,
    if(number % 2 = 0, NULL, number) AS n, NULL AS nothing, range(number) AS a,
    [range(number), [1]] AS aa, map('k', number) AS m, (number, 'z', [toString(number)]) AS t,
    toLowCardinality(toString(number % 3)) AS lc, toLowCardinality(if(number = 1, NULL, 'v')) AS lcn,
    toDate('2024-01-01') AS d, toDateTime64('2024-01-01 00:00:00.123', 3, 'Asia/Tokyo') AS dt64,
    toDecimal128(number, 4) AS dec, toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS uuid,
    toIPv6('::1') AS ip, CAST('a', 'Enum8(\\'a\\' = 1, \\'b,c\\' = 2)') AS e,
    CAST((1.0, 2.0), 'Point') AS pt, [NULL, number] AS an FROM numbers(300)"""
COLUMNS = ["u64", "i8", "f64", "s", "fs", "n", "nothing", "a", "aa", "m", "t", "lc", "lcn", "d",
           "dt64", "dec", "uuid", "ip", "e", "pt", "an"]


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes


def raw(endpoint: Endpoint, params: dict[str, str], body: bytes = b"", *,
        key: str | None = None, headers: dict[str, str] | None = None) -> Raw:
    url = f"{endpoint.url}/?{urllib.parse.urlencode(params)}"
    sent = {**basic(key or endpoint.keys.read), **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=sent)  # POST, as clients do
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Raw(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Raw(error.code, dict(error.headers), error.read())


@pytest.fixture
def endpoint(settings: Settings, clickhouse: Client) -> Iterator[Endpoint]:
    with serving(settings) as served:
        yield served


def test_compressed_blocks_both_ways(endpoint: Endpoint) -> None:
    answer = raw(endpoint, {"query": "SELECT number FROM numbers(3)", "compress": "1"})
    assert answer.body[16] == Method.LZ4 and read_blocks(answer.body, 1 << 20) == b"0\n1\n2\n"
    # Inside HTTP compression, as ClickHouse nests them (and as Grafana's gzip asks).
    both = raw(endpoint, {"query": "SELECT 1", "compress": "1", "enable_http_compression": "1"},
               headers={"Accept-Encoding": "gzip"})
    assert both.headers["Content-Encoding"] == "gzip"
    assert read_blocks(gzip.decompress(both.body), 1 << 20) == b"1\n"
    # A writer's rows sent in ZSTD blocks; a corrupted block is refused by its checksum.
    admin = endpoint.keys.admin
    raw(endpoint, {"query": "CREATE TABLE pets (id UInt8, name String) ENGINE = Memory"},
        b"", key=admin)
    rows = BlockWriter(Method.ZSTD).write(b"1\tada\n2\tbob\n")
    sent = raw(endpoint, {"query": "INSERT INTO pets FORMAT TSV", "decompress": "1"}, rows,
               key=admin)
    assert sent.status == 200, sent.body
    damaged = rows[:-1] + bytes([rows[-1] ^ 1])
    refused = raw(endpoint, {"query": "INSERT INTO pets FORMAT TSV", "decompress": "1"},
                  damaged, key=admin)
    assert refused.headers["X-ClickHouse-Exception-Code"] == "40"
    assert raw(endpoint, {"query": "SELECT name FROM pets ORDER BY id"}).body == b"ada\nbob\n"


def test_native_in_the_layout_of_the_clients_protocol_revision(endpoint: Endpoint) -> None:
    # clickhouse-go's request: Native by default, its revision, LZ4 blocks.
    params = {"default_format": "Native", "client_protocol_version": "54460", "compress": "1"}
    answer = raw(endpoint, {**params, "query": WIDE})
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Content-Type"] == "application/octet-stream"
    block = read_blocks(answer.body, 1 << 24)
    assert block.startswith(b"\x01\x00\x02\xff\xff\xff\xff\x00")  # the block info
    # Each column, as the engine writes it alone in the revision-0 layout, is found in order
    # with one 0 byte (default serialization) between its type and its data.
    at = 8 + 1 + 2  # block info, 21 columns, 300 rows
    for name in COLUMNS:
        alone = raw(endpoint, {"default_format": "Native",
                               "query": f"SELECT {name} FROM ({WIDE})"}).body[3:]
        header_length = 2 + alone[0] + alone[1 + alone[0]]  # name and type, each length-prefixed
        assert block[at:at + header_length] == alone[:header_length], name
        assert block[at + header_length] == 0, name
        data = alone[header_length:]
        assert block[at + header_length + 1:at + header_length + 1 + len(data)] == data, name
        at += header_length + 1 + len(data)
    assert at == len(block)
    # A type whose layout depends on the revision: refused before any byte, saying so.
    refused = raw(endpoint, {**params, "query": "SELECT CAST(1, 'Dynamic') AS d"})
    assert refused.status == 501 and b"NOT_IMPLEMENTED" in refused.body
    # Without a revision: the engine's own layout, as before.
    plain = raw(endpoint, {"default_format": "Native", "query": "SELECT 1 AS x"})
    assert plain.body == b"\x01\x01\x01x\x05UInt8\x01"


def test_headers_say_format_time_zone_and_summary(endpoint: Endpoint) -> None:
    answer = raw(endpoint, {"query": "SELECT number FROM numbers(10) FORMAT JSONEachRow",
                            "session_timezone": "Asia/Tokyo"})
    assert answer.headers["Content-Type"] == "application/x-ndjson; charset=UTF-8"
    assert answer.headers["X-ClickHouse-Timezone"] == "Asia/Tokyo"
    summary = json.loads(answer.headers["X-ClickHouse-Summary"])
    assert set(summary) >= {"read_rows", "read_bytes", "written_rows", "result_rows",
                            "elapsed_ns"}
    assert summary["result_rows"] == "10"
    for fmt, expected in [("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
                          ("Pretty", "text/plain; charset=UTF-8"),
                          ("Arrow", "application/octet-stream"),
                          ("JSON", "application/json; charset=UTF-8")]:
        typed = raw(endpoint, {"query": "SELECT 1", "default_format": fmt})
        assert typed.headers["Content-Type"] == expected, fmt
        assert typed.headers["X-ClickHouse-Timezone"]  # the server's: chDB's is UTC


def test_a_session_keeps_temporary_tables_set_and_use(endpoint: Endpoint) -> None:
    def run(sql: str, session: str = "s1", key: str | None = None, **params: str) -> Raw:
        return raw(endpoint, {"query": sql, "session_id": session, **params}, key=key)

    assert run("CREATE TEMPORARY TABLE picks (x UInt8)").status == 200
    assert run("INSERT INTO picks VALUES (7)").status == 200
    assert run("SELECT x FROM picks").body == b"7\n"
    # Another session, or the same id with another key, does not see it.
    assert run("SELECT x FROM picks", "s2").headers["X-ClickHouse-Exception-Code"] == "60"
    other_key = run("SELECT x FROM picks", key=endpoint.keys.admin)
    assert other_key.headers["X-ClickHouse-Exception-Code"] == "60"
    # A URL setting is the request's own; SET is the session's, through the same allow-list.
    tz = "SELECT timezone()"
    assert run(tz, session_timezone="Asia/Tokyo").body == b"Asia/Tokyo\n"
    assert run(tz).body != b"Asia/Tokyo\n"
    assert run("SET session_timezone = 'Asia/Tokyo'").status == 200
    assert run(tz).body == b"Asia/Tokyo\n"
    for refused in ("SET max_execution_time = 0", "SET readonly = 0",
                    "SET allow_introspection_functions = 1"):
        assert run(refused).headers["X-ClickHouse-Exception-Code"] == "497", refused
    assert run("USE system").status == 200
    assert run("SELECT currentDatabase()").body == b"system\n"
    # A reader's session still writes nothing but temporary tables.
    assert run(f"CREATE TABLE {endpoint.database}.t (x UInt8) ENGINE = Memory").status == 403
    # Outside a session none of it is allowed.
    assert raw(endpoint, {"query": "SET session_timezone = 'UTC'"}).status == 403
    missing = run("SELECT 1", "never", session_check="1")
    assert missing.headers["X-ClickHouse-Exception-Code"] == "372"
    assert run("SELECT 1", close_session="1").status == 200
    assert run("SELECT x FROM picks").headers["X-ClickHouse-Exception-Code"] == "60"


def test_a_session_used_twice_at_once_is_locked(endpoint: Endpoint) -> None:
    # A result being read holds its session until it has all gone: one row a block, 0.3 s a row.
    reading = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    query = urllib.parse.urlencode({"session_id": "busy", "max_block_size": "1", "query":
                                    "SELECT sleepEachRow(0.3) FROM numbers(4)"})
    reading.request("POST", f"/?{query}", headers=basic(endpoint.keys.read))
    try:
        response = reading.getresponse()
        assert response.status == 200 and response.read(2) == b"0\n"
        second = raw(endpoint, {"session_id": "busy", "query": "SELECT 1"})
        assert second.headers["X-ClickHouse-Exception-Code"] == "373"
        assert response.read() == b"0\n" * 3
    finally:
        reading.close()
    assert raw(endpoint, {"session_id": "busy", "query": "SELECT 1"}).body == b"1\n"


def test_clickhouse_connect_with_compression(endpoint: Endpoint) -> None:
    for compress in ("lz4", "zstd", "gzip"):
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=endpoint.port, password=endpoint.keys.admin,
            database=endpoint.database, compress=compress)
        try:
            client.command("CREATE TEMPORARY TABLE IF NOT EXISTS n (x UInt32)")
            client.insert("n", [[i] for i in range(1000)], column_names=["x"])
            assert client.query("SELECT sum(x) FROM n").result_rows == [(499500,)]
            assert len(client.query_df("SELECT * FROM numbers(20000)")) == 20000
        finally:
            client.close()
