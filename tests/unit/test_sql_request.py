"""Requests read as ClickHouse's HTTP handler reads them: URL, body, multipart form fields and
file parts (external tables), bytes kept as bytes, bodies read as they arrive (every test's
body comes in pieces of a few bytes, so that each boundary and header falls across them)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping

import pytest
from urllib3 import encode_multipart_formdata

from steplog.server.sql_errors import SqlError
from steplog.server.sql_external import parse_structure, parse_types
from steplog.server.sql_request import FormPart, SqlRequest, read_form

PIECE = 3


async def pieces(body: bytes, size: int = PIECE) -> AsyncIterator[bytes]:
    for at in range(0, len(body), size):
        yield body[at:at + size]


def read(params: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> SqlRequest:
    return asyncio.run(SqlRequest.read(params, headers, pieces(body), "db"))


def read_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    parts: list[FormPart] = asyncio.run(read_form(content_type, pieces(body)))
    contents = [(p.name, p.filename, p.data.read()) for p in parts]
    for part in parts:
        part.data.close()
    return contents


def multipart(fields: dict[str, str | tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    """The body and headers urllib3 makes of `fields` (clickhouse-connect's sync client)."""
    body, content_type = encode_multipart_formdata(fields)
    return {"Content-Type": content_type}, body


def test_the_body_continues_the_url_query_and_stays_bytes() -> None:
    rows = b"\x00\xff\x01binary rows"
    request = read({"query": "INSERT INTO t FORMAT RowBinary", "param_x": "1",
                               "max_threads": "1", "": "skipped"}, {}, rows)
    assert request.url_query == "INSERT INTO t FORMAT RowBinary"
    assert request.body is not None and request.body.read() == rows
    assert request.params == {"x": "1"} and request.settings == {"max_threads": "1"}


def test_an_urlencoded_body_is_query_text_as_in_clickhouse() -> None:
    # What curl -d and urllib label every body with.
    request = read({}, {"Content-Type": "application/x-www-form-urlencoded"},
                              b"SELECT 'a=b&c'")
    assert request.text() == "SELECT 'a=b&c'"


def test_headers_win_over_parameters_as_in_clickhouse() -> None:
    request = read({"database": "p", "default_format": "CSV"},
                              {"X-ClickHouse-Database": "h", "X-ClickHouse-Format": "JSON"},
                              b"")
    assert (request.database, request.default_format) == ("h", "JSON")


def test_form_fields_are_parameters_and_file_parts_are_tables() -> None:
    headers, body = multipart({
        "query": "SELECT * FROM pets WHERE id > {low:Int32}",
        "param_low": "1", "param_url": "form", "max_threads": "2",
        "pets": ("pets.csv", b"1,ada\n\x00\xff"),
        "pets_structure": "id Int32, name String",
    })
    request = read({"query": "-- url\n", "param_url": "url", "pets_format": "CSV"},
                              headers, body)
    assert request.text() == "-- url\nSELECT * FROM pets WHERE id > {low:Int32}"
    assert request.params == {"low": "1", "url": "url"}  # the URL's wins
    assert request.settings == {"max_threads": "2"}  # not pets_format nor pets_structure
    [table] = request.external_tables
    assert (table.name, table.format, table.data.read()) == ("pets", "CSV", b"1,ada\n\x00\xff")
    assert table.structure == (("id", "Int32"), ("name", "String"))


def test_a_file_part_without_its_structure_is_refused_naming_it() -> None:
    headers, body = multipart({"query": "SELECT 1", "t": ("t.tsv", b"1\n")})
    with pytest.raises(SqlError, match=r"external table 't'.*t_structure or t_types") as error:
        read({}, headers, body)
    assert error.value.code == 36


def test_a_field_that_is_not_utf8_is_refused_naming_it() -> None:
    headers, body = multipart({"query": "SELECT 1", "param_x": "é"})
    body = body.replace("é".encode(), b"\xff")
    with pytest.raises(SqlError, match="form field 'param_x' is not UTF-8"):
        read({}, headers, body)


@pytest.mark.parametrize(("body", "what"), [
    (b"no boundary at all", "no boundary"),
    (b"--B\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nx", "does not end"),
    (b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--", "no Content-Disposition name"),
    (b"--Bjunk", "not followed by a line break"),
])
def test_a_malformed_multipart_body_is_refused_saying_where(body: bytes, what: str) -> None:
    with pytest.raises(SqlError, match=what) as error:
        read_multipart("multipart/form-data; boundary=B", body)
    assert error.value.code == 27


def test_part_contents_are_bytes_as_sent() -> None:
    data = b"\r\n-B\r\n--C\r\n\x00--B"
    parts = read_multipart('multipart/form-data; boundary="B"',
                           b"preamble\r\n--B\r\nContent-Disposition: form-data; name=\"t\"; "
                           b"filename=\"t.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                           + data + b"\r\n--B--\r\n")
    assert parts == [("t", "t.bin", data)]


def test_structures_are_split_outside_brackets_and_quotes() -> None:
    assert parse_structure("t", "a Map(String, Array(Int8)), `b, c` Enum8('x,)' = 1), "
                                "\"d\" DateTime64(3, 'UTC')") == (
        ("a", "Map(String, Array(Int8))"), ("b, c", "Enum8('x,)' = 1)"),
        ("d", "DateTime64(3, 'UTC')"))
    assert parse_types("t", "UInt8, Tuple(a Int8, b String)") == (
        ("_1", "UInt8"), ("_2", "Tuple(a Int8, b String)"))


@pytest.mark.parametrize(("structure", "why"), [
    ("", "no columns"), ("a Int8,", "column 2 is empty"), ("a Int8) ENGINE = File(TSV", "')'"),
    ("a Array(Int8", "'('"), ("a", "has no type"), ("a-b Int8", "not a column name"),
    ("a Enum8('x = 1)", "unterminated"),
])
def test_a_bad_structure_is_refused_naming_the_table(structure: str, why: str) -> None:
    with pytest.raises(SqlError, match=f"external table 'pets'.*{re.escape(why)}"):
        parse_structure("pets", structure)
