"""`send_progress_in_http_headers=1`: X-ClickHouse-Progress headers while the query runs.

Read off the socket as they come (the head goes out before the query has produced anything),
and through clickhouse-connect, which must read such a response as any other.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from steplog.settings import Settings
from tests.integration.sql_endpoint_server import Endpoint, basic, serving

# Half a second of reading whatever the machine's speed (20 blocks of 25 rows, 1 ms a row),
# and one row at its end.
COUNT = "SELECT count() FROM numbers(500) WHERE NOT ignore(sleepEachRow(0.001))"
BLOCKS = {"max_block_size": "25", "max_threads": "1"}
PROGRESS_FIELDS = ("read_rows", "read_bytes", "written_rows", "written_bytes",
                   "total_rows_to_read", "result_rows", "result_bytes", "elapsed_ns")


@pytest.fixture
def endpoint(settings: Settings, clickhouse: Client) -> Iterator[Endpoint]:
    with serving(settings) as served:  # `clickhouse` creates the test's database
        yield served


@dataclass
class RawResponse:
    status_line: str
    headers: list[tuple[str, str, float]]
    """Each header line as it came: name, value, seconds after the request was sent."""
    body: bytes
    body_at: float
    """Seconds after the request was sent when the first byte of the body came."""

    def values(self, name: str) -> list[str]:
        return [value for got, value, _ in self.headers if got.lower() == name.lower()]


def raw_get(endpoint: Endpoint, params: dict[str, str]) -> RawResponse:
    """One HTTP/1.1 GET, read off the socket as it arrives (chunked body decoded)."""
    query = urllib.parse.urlencode(params)
    auth = basic(endpoint.keys.read)["Authorization"]
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=60) as conn:
        started = time.monotonic()
        conn.sendall(f"GET /?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                     "Connection: close\r\n\r\n".encode())
        stream = conn.makefile("rb")
        status_line = stream.readline().decode().rstrip("\r\n")
        headers: list[tuple[str, str, float]] = []
        while (line := stream.readline().decode()) not in ("\r\n", ""):
            name, _, value = line.rstrip("\r\n").partition(": ")
            headers.append((name, value, time.monotonic() - started))
        body = b""
        body_at = 0.0
        while size := int(stream.readline().strip() or b"0", 16):
            body += stream.read(size)
            body_at = body_at or time.monotonic() - started
            stream.readline()
    return RawResponse(status_line, headers, body, body_at)


def test_progress_headers_come_while_the_query_runs(endpoint: Endpoint) -> None:
    got = raw_get(endpoint, {"query": COUNT, "send_progress_in_http_headers": "1",
                             "http_headers_progress_interval_ms": "150", **BLOCKS})
    assert got.status_line == "HTTP/1.1 200 OK" and got.body == b"500\n"
    progress = [(json.loads(value), at) for name, value, at in got.headers
                if name == "X-ClickHouse-Progress"]
    assert len(progress) >= 2, got.headers
    # Before the body, each with the running totals in ClickHouse's shape, at the interval.
    assert all(at < got.body_at for _, at in progress)
    for (before, _), (after, _) in zip(progress, progress[1:]):
        assert int(after["read_rows"]) >= int(before["read_rows"])
        assert int(after["elapsed_ns"]) - int(before["elapsed_ns"]) >= 150_000_000
    for fields, _ in progress:
        assert list(fields) == [name for name in PROGRESS_FIELDS if name in fields]
        assert all(isinstance(value, str) and value.isdigit() and value != "0"
                   for value in fields.values())
        assert fields["total_rows_to_read"] == "500"
    # The head went before the first progress line; the summary and aiohttp's own headers
    # end the headers when the body starts.
    names = [name for name, _, _ in got.headers]
    first_progress = names.index("X-ClickHouse-Progress")
    assert {"Content-Type", "X-ClickHouse-Format", "X-ClickHouse-Query-Id",
            "X-ClickHouse-Exception-Tag"} <= set(names[:first_progress])
    assert names.index("X-ClickHouse-Summary") > first_progress
    assert "Transfer-Encoding" in names[first_progress:]
    others = [name for name in names if name != "X-ClickHouse-Progress"]
    assert len(others) == len(set(others)), others  # none sent twice
    summary = json.loads(got.values("X-ClickHouse-Summary")[0])
    assert list(summary) == list(PROGRESS_FIELDS) and summary["result_rows"] == "1"


def test_an_error_after_progress_headers_is_a_code_header_and_the_stream_exception(
        endpoint: Endpoint) -> None:
    failing = COUNT.replace("count()", "throwIf(count() > 0)")
    got = raw_get(endpoint, {"query": failing, "send_progress_in_http_headers": "1", **BLOCKS})
    # The status went as 200 with the head: the code comes as a header, then the message.
    assert got.status_line == "HTTP/1.1 200 OK" and got.values("X-ClickHouse-Progress")
    assert got.values("X-ClickHouse-Exception-Code") == ["395"]
    tag = got.values("X-ClickHouse-Exception-Tag")[0]
    assert got.body.startswith(f"\r\n__exception__\r\n{tag}\r\nCode: 395.".encode())

    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port,
                                           password=endpoint.keys.admin)
    try:
        settings = {"send_progress_in_http_headers": 1, "http_headers_progress_interval_ms": 100,
                    **BLOCKS}
        assert client.query(COUNT, settings=settings).result_rows == [(500,)]
        with pytest.raises(DatabaseError, match="395"):
            client.query(failing, settings=settings)
        assert client.command("SELECT 1") == 1
    finally:
        client.close()


def test_wait_end_of_query_sends_progress_until_the_end(endpoint: Endpoint) -> None:
    """A streamed result ends its headers at its first block; buffered, at the query's end."""
    rows = COUNT.replace("count()", "number")
    got = raw_get(endpoint, {"query": rows, "send_progress_in_http_headers": "1",
                             "wait_end_of_query": "1", **BLOCKS})
    progress = [json.loads(value) for value in got.values("X-ClickHouse-Progress")]
    assert len(progress) >= 2 and got.body == b"".join(b"%d\n" % n for n in range(500))
    assert int(progress[-1]["read_rows"]) > int(progress[0]["read_rows"])
