"""The request shapes ClickHouse clients send, read as ClickHouse's HTTP handler reads them.

Against the real endpoint on the real engine (one endpoint for the module): external data
(multipart file parts as tables, in every format, several, empty), form-encoded and large
parameters, the engine's own parameter binding (a differential test: the same query and
parameters in-process and through the endpoint give identical bytes), binary INSERT bodies,
and what a form or an external table must not smuggle in.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from http.client import HTTPConnection
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.external import ExternalData
from urllib3 import encode_multipart_formdata

from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.server.sql_engine import Engine
from steplog.server.sql_errors import SqlError
from steplog.server.sql_settings import SqlLimits
from steplog.settings import Settings
from tests.conftest import isolated_settings, wait_for
from tests.integration.sql_endpoint_server import Answer, Endpoint, basic, http, serving

OUTSIDE = "/etc/hostname"


@pytest.fixture(scope="module")
def module_settings(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    settings = isolated_settings(kafka_bootstrap, clickhouse_dsn, tmp_path_factory.mktemp("sql"))
    client = open_clickhouse(settings.clickhouse_dsn)
    client.command(f"CREATE DATABASE {settings.clickhouse_database}")
    try:
        yield settings
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")


@pytest.fixture(scope="module")
def endpoint(module_settings: Settings) -> Iterator[Endpoint]:
    with serving(module_settings) as served:
        yield served


@pytest.fixture(scope="module")
def engine(module_settings: Settings) -> Engine:
    path = chdb_path(module_settings.clickhouse_dsn)
    assert path is not None
    return Engine(path)


def posted_form(endpoint: Endpoint, key: str, url: dict[str, str],
                fields: dict[str, str | tuple[str, bytes]]) -> Answer:
    body, content_type = encode_multipart_formdata(fields)
    return http(endpoint.url, key=key, params=url, body=body,
                headers={"Content-Type": content_type})


def written(engine: Engine, select: str, fmt: str) -> bytes:
    """Rows in a binary format, as the engine writes it (what clients send is the same)."""
    with engine.session() as session:
        return session.query(select, {}, fmt)


PETS = "SELECT toInt32(number + 1) AS id, ['ada', 'bob'][number + 1] AS name FROM numbers(2)"


def test_external_tables_in_every_format_several_and_empty(
    endpoint: Endpoint, engine: Engine
) -> None:
    row_binary = b"".join(struct.pack("<i", n) + bytes([len(s)]) + s
                          for n, s in ((1, b"x\x00\xff"), (2, b"y")))
    answer = posted_form(
        endpoint, endpoint.keys.read,
        {"csv_format": "CSV", "csv_structure": "id Int32, name String",
         "tsv_types": "Int32, String",
         "pq_format": "Parquet", "pq_structure": "id Int32, name String",
         "arr_format": "Arrow", "arr_structure": "id Int32, name String",
         "rb_format": "RowBinary", "rb_structure": "id Int32, `odd name` String",
         "none_structure": "id Int32", "none_format": "Parquet"},
        {"query": "SELECT (SELECT groupArray((id, name)) FROM (SELECT * FROM csv ORDER BY id)),"
                  " (SELECT groupArray((_1, _2)) FROM tsv), (SELECT groupArray(name) FROM pq),"
                  " (SELECT sum(id) FROM arr), (SELECT groupArray(hex(`odd name`)) FROM rb),"
                  " (SELECT count() FROM none) FORMAT TSV",
         "csv": ("pets.csv", b'1,"ada"\n2,"b,ob"\n'), "tsv": ("t.tsv", b"7\tseven\n"),
         "pq": ("p.parquet", written(engine, PETS, "Parquet")),
         "arr": ("a.arrow", written(engine, PETS, "Arrow")),
         "rb": ("r.bin", row_binary), "none": ("empty.parquet", b"")},
    )
    assert answer.status == 200, answer.body
    assert answer.body == ("[(1,'ada'),(2,'b,ob')]\t[(7,'seven')]\t['ada','bob']\t3\t"
                           "['7800FF','79']\t0\n")
    # Visible to that query only: the next request's session has no such table.
    after = http(endpoint.url, key=endpoint.keys.read, body=b"SELECT count() FROM csv")
    assert after.headers["X-ClickHouse-Exception-Code"] == "60", after.body


def test_clickhouse_connect_external_data_and_large_parameters(endpoint: Endpoint) -> None:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port,
                                           password=endpoint.keys.read)
    try:
        external = ExternalData(file_name="pets.csv", data=b"1,ada\n2,bob\n", fmt="CSV",
                                structure=["id UInt8", "name String"])
        external.add_file(file_name="more.tsv", data=b"", types="UInt8")
        rows = client.query("SELECT name, (SELECT count() FROM more) FROM pets ORDER BY id",
                            external_data=external).result_rows
        assert rows == [("ada", 0), ("bob", 0)]
        # Past 4 KiB of parameters, clickhouse-connect sends them as multipart form fields.
        big = "x'\\\t" * 3000
        got = client.query("SELECT length({big:String}), {big:String} = {same:String}",
                           parameters={"big": big, "same": big}).result_rows
        assert got == [(len(big), 1)]
    finally:
        client.close()


# (query, params): each runs in-process and through the endpoint (URL and form) alike.
PARAMETERS = [
    ("SELECT {s:String}", {"s": "it's a \\\\ back\\tslash and a \\'quote"}),
    ("SELECT {a:Array(Nullable(String))}", {"a": "['x',NULL,'\\\\N',\\N]"}),
    ("SELECT {a:Array(Nullable(Int32))}", {"a": "[1,NULL,\\N]"}),
    ("SELECT {m:Map(String, Nullable(Int32))}", {"m": "{'a':NULL,'b':2}"}),
    ("SELECT {t:Tuple(Nullable(Int8), String)}", {"t": "(NULL,'x')"}),
    ("SELECT {n:Nullable(String)}", {"n": "\\N"}),
    ("SELECT {d:DateTime64(6, 'UTC')}", {"d": "2024-01-02 03:04:05.123456"}),
    ("SELECT {t:Time}, {u:Time64(3)}", {"t": "12:34:56", "u": "-01:02:03.456"}),
    ("SELECT number FROM numbers(5) WHERE number IN {t:Tuple(UInt64, UInt64)}",
     {"t": "(1,3)"}),
    ("SELECT {a$b:String}, {c:String}", {"a$b": "dollar", "c": "line\\nnext"}),
    ("SELECT count() FROM {t:Identifier}", {"t": "system.one"}),
    ("SELECT {x:Int8}", {"x": "300"}),  # the engine's error, the same both ways
]


def in_process(engine: Engine, query: str, params: dict[str, str]) -> bytes | int:
    with engine.session() as session:
        try:
            return session.query(query, params, "TabSeparated")
        except SqlError as error:
            return error.code


@pytest.mark.parametrize(("query", "params"), PARAMETERS)
def test_parameters_reach_the_engines_binding_unchanged(
    endpoint: Endpoint, engine: Engine, query: str, params: dict[str, str]
) -> None:
    expected = in_process(engine, query, params)
    named = {f"param_{name}": value for name, value in params.items()}
    via_url = http(endpoint.url, key=endpoint.keys.read, params={"query": query, **named})
    via_form = posted_form(endpoint, endpoint.keys.read, {}, {"query": query, **named})
    for answer in (via_url, via_form):
        if isinstance(expected, int):
            assert answer.headers["X-ClickHouse-Exception-Code"] == str(expected), answer.body
        else:
            assert (answer.status, answer.body.encode()) == (200, expected), answer.body


def test_binary_insert_bodies_arrive_as_sent(endpoint: Endpoint, engine: Engine) -> None:
    admin, db = endpoint.keys.admin, endpoint.database
    table = f"{db}.`odd``table`"  # backticks in identifiers are kept
    created = http(endpoint.url, key=admin, body=(
        f"CREATE TABLE {table} (`id` Int32, `the name` String) ENGINE = MergeTree ORDER BY id"
    ).encode())
    assert created.status == 200, created.body
    bodies = {
        "RowBinary": struct.pack("<i", 1) + b"\x03\x00\xff\n",
        "Native": written(engine, "SELECT toInt32(2) AS id, 'nat\\0' AS `the name`", "Native"),
        "Parquet": written(engine, "SELECT toInt32(3) AS id, 'pq\\0' AS `the name`", "Parquet"),
    }
    for fmt, body in bodies.items():
        answer = http(endpoint.url, key=admin,
                      params={"query": f"INSERT INTO {table} FORMAT {fmt}"}, body=body)
        assert answer.status == 200, (fmt, answer.body)
    dropper = f"`tick`; DROP TABLE {table}"
    values = http(endpoint.url, key=admin, body=(
        f"INSERT INTO {table} VALUES (4, 'a;b'), (5, '{dropper}')").encode())
    assert values.status == 200, values.body
    got = http(endpoint.url, key=endpoint.keys.read, params={
        "query": f"SELECT id, hex(`the name`) FROM {table} ORDER BY id"})
    names = [b"\x00\xff\n", b"nat\x00", b"pq\x00", b"a;b", dropper.encode()]
    assert got.body.splitlines() == [f"{n}\t{name.hex().upper()}" for n, name in
                                     enumerate(names, 1)]


@pytest.mark.parametrize(("url", "fields", "named"), [
    ({}, {"query": f"SELECT * FROM file('{OUTSIDE}')"}, "file"),
    ({"query": "SELECT 1 "}, {"query": f"UNION ALL SELECT * FROM url('http://127.0.0.1:1/')"},
     "url"),
    ({}, {"query": "SELECT {t:Identifier}", "param_t": "x) FROM file('/etc/hostname'"}, ""),
    ({}, {"query": "SELECT 1", "readonly": "0"}, "readonly"),
    ({"t_structure": f"a String DEFAULT file('{OUTSIDE}')"},
     {"query": "SELECT * FROM t", "t": ("t.tsv", b"x\n")}, "external table 't'"),
    ({"t_structure": f"a String) ENGINE = File(TSV, '{OUTSIDE}')"},
     {"query": "SELECT * FROM t", "t": ("t.tsv", b"x\n")}, "external table 't'"),
    ({"t_types": f"String, Nullable(file('{OUTSIDE}'))"},
     {"query": "SELECT * FROM t", "t": ("t.tsv", b"x\n")}, "external table 't'"),
    ({"t_structure": "a String", "t_format": "Template"},
     {"query": "SELECT * FROM t", "t": ("t.tsv", b"x\n")}, "external table 't'"),
])
def test_forms_and_external_tables_smuggle_nothing_in(
    endpoint: Endpoint, url: dict[str, str], fields: dict[str, str | tuple[str, bytes]],
    named: str,
) -> None:
    answer = posted_form(endpoint, endpoint.keys.read, url, fields)
    assert answer.status in (400, 403, 404), answer.body
    assert answer.body.startswith("Code: ") and named.lower() in answer.body.lower(), answer.body
    assert http(endpoint.url, key=endpoint.keys.read, body=b"SELECT 1").body == "1\n"


# Bodies read as a stream: spooled to disk as they arrive, fed to the engine in chunks.

NUMBERS = "".join(f"{n}\n" for n in range(100_000)).encode()  # 588,890 bytes of CSV
NUMBERS_SUM = sum(range(100_000))


def csv_numbers(repeats: int) -> Iterator[bytes]:
    """A large CSV made on the fly, as a client streams a file: NUMBERS `repeats` times."""
    for _ in range(repeats):
        yield NUMBERS


def posted_stream(endpoint: Endpoint, key: str, params: dict[str, str],
                  chunks: Iterable[bytes], headers: dict[str, str]) -> Answer:
    """A POST whose body is sent as it is made, with chunked transfer encoding."""
    conn = HTTPConnection("127.0.0.1", endpoint.port, timeout=120)
    try:
        conn.request("POST", f"/?{urllib.parse.urlencode(params)}", body=chunks,
                     headers={**basic(key), **headers}, encode_chunked=True)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read().decode())
    finally:
        conn.close()


def form_with_file(name: str, chunks: Iterable[bytes], fields: dict[str, str],
                   boundary: str = "STEPLOGxBOUNDARY") -> tuple[Iterator[bytes], dict[str, str]]:
    """A multipart body whose file part `name` comes first, its `fields` after it."""
    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
               f"filename=\"{name}.csv\"\r\n\r\n").encode()
        yield from chunks
        for field, value in fields.items():
            yield (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\""
                   f"\r\n\r\n{value}").encode()
        yield f"\r\n--{boundary}--\r\n".encode()
    return body(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def spool_files() -> set[str]:
    """The temporary files this process holds open and that have no name any more: spools
    (the endpoint runs in this process), and pytest's own capture files."""
    held = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            held.add(target)
    return held


def test_a_large_external_table_streams_through_disk_not_memory(endpoint: Endpoint) -> None:
    # 200 MiB of CSV, its structure sent after it (a form field after the file part), to
    # an endpoint in this very process: its growth is this process's (VmHWM reset first).
    repeats = 356
    chunks, headers = form_with_file("t", csv_numbers(repeats), {
        "t_structure": "x UInt64", "query": "SELECT count(), sum(x) FROM t"})
    others = spool_files()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_kib("VmRSS")
    answer = posted_stream(endpoint, endpoint.keys.read, {"t_format": "CSV"}, chunks, headers)
    grown_mib = (rss_kib("VmHWM") - before) / 1024
    assert answer.status == 200, answer.body
    assert answer.body == f"{100_000 * repeats}\t{NUMBERS_SUM * repeats}\n"
    assert grown_mib < 64, f"the endpoint grew by {grown_mib:.0f} MiB for a 200 MiB table"
    assert spool_files() == others


def test_an_insert_body_streams_compressed_into_the_table(endpoint: Endpoint) -> None:
    admin, table = endpoint.keys.admin, f"{endpoint.database}.streamed"
    created = http(endpoint.url, key=admin, body=(
        f"CREATE TABLE {table} (x UInt64) ENGINE = MergeTree ORDER BY tuple()").encode())
    assert created.status == 200, created.body
    gzipped = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressed = [gzipped.compress(chunk) for chunk in csv_numbers(20)] + [gzipped.flush()]
    answer = posted_stream(endpoint, admin, {"query": f"INSERT INTO {table} FORMAT CSV"},
                           compressed, {"Content-Encoding": "gzip"})
    assert answer.status == 200, answer.body
    got = http(endpoint.url, key=admin, body=f"SELECT count(), sum(x) FROM {table}".encode())
    assert got.body == f"{100_000 * 20}\t{NUMBERS_SUM * 20}\n"


def test_a_body_past_the_limit_is_413_naming_the_setting(module_settings: Settings) -> None:
    limits = replace(SqlLimits.from_settings(module_settings), max_body_bytes=1024 * 1024)
    with serving(module_settings, limits) as small:
        bomb = gzip.compress(b"1\n" * 1024 * 1024)  # 2 MiB decoded from a few KiB
        answer = http(small.url, key=small.keys.admin, body=bomb,
                      params={"query": "INSERT INTO t FORMAT CSV"},
                      headers={"Content-Encoding": "gzip"})
    assert answer.status == 413, answer.body
    assert answer.headers["X-ClickHouse-Exception-Code"] == "290"
    assert "STEPLOG_SQL_MAX_BODY_MB" in answer.body and "1048576 bytes" in answer.body


def test_spooled_parts_are_freed_on_error_and_when_the_client_goes(endpoint: Endpoint) -> None:
    others = spool_files()
    # Rows the engine refuses, after 6 MiB of good ones (on disk by then).
    chunks, headers = form_with_file("t", [*csv_numbers(10), b"not a number\n"], {
        "t_structure": "x UInt64", "query": "SELECT count() FROM t"})
    refused = posted_stream(endpoint, endpoint.keys.read, {"t_format": "CSV"}, chunks, headers)
    assert refused.status == 400 and "external table 't'" in refused.body, refused.body
    assert spool_files() == others
    # A client that hangs up halfway through its upload.
    chunks, headers = form_with_file("t", csv_numbers(1000), {"t_structure": "x UInt64"})
    conn = HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    conn.putrequest("POST", "/?t_format=CSV")
    for name, value in {**basic(endpoint.keys.read), **headers,
                        "Transfer-Encoding": "chunked"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    for _ in range(20):  # about 11 MiB
        chunk = next(chunks)
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    wait_for(lambda: len(spool_files() - others) == 1, timeout=30,
             what="the part spooled to disk")
    conn.close()
    wait_for(lambda: spool_files() == others, timeout=30, what="the spool freed")
