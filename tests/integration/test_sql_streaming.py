"""The SQL endpoint streams results, runs queries side by side, and stops abandoned ones.

Served in this process (tests/integration/sql_endpoint_server.py), so the store process whose
memory is measured is this one (/proc/self).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import clickhouse_connect
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, StreamFailureError

from steplog.server.sql_settings import SqlLimits
from steplog.settings import Settings
from tests.conftest import wait_for
from tests.integration.sql_endpoint_server import Endpoint, basic, http, serving

# Runs until killed (well past the test's deadlines), producing nothing before its end.
LONG_COUNT = "SELECT count() FROM numbers(1e12) WHERE sipHash64(number) % 7 = 1"


@pytest.fixture
def endpoint(settings: Settings, clickhouse: Client) -> Iterator[Endpoint]:
    with serving(settings) as served:  # `clickhouse` creates the test's database
        yield served


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def running_long_counts(endpoint: Endpoint) -> int:
    answer = http(endpoint.url, key=endpoint.keys.admin, body=(
        "SELECT count() FROM system.processes WHERE query LIKE '%sipHash64(number) % 7%' "
        "AND query NOT LIKE '%system.processes%'").encode())
    return int(answer.body)


def test_an_error_after_the_first_rows_comes_in_the_stream(endpoint: Endpoint) -> None:
    query = "SELECT number, throwIf(number = 100) FROM numbers(1000)"
    raw = http(endpoint.url, key=endpoint.keys.read,
               params={"query": query, "max_block_size": "1"})
    tag = raw.headers["X-ClickHouse-Exception-Tag"]
    assert raw.status == 200 and raw.body.startswith("0\t0\n1\t0\n")
    block = raw.body[raw.body.index("\r\n__exception__"):]
    message = block.split("\r\n")[3].split("\n")[0]
    assert block == (f"\r\n__exception__\r\n{tag}\r\n{message}\n{len(message.encode())} {tag}"
                     "\r\n__exception__\r\n")
    assert message.startswith("Code: 395.") and "(FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)" in message

    # The admin key: a reader's session is readonly=1, where clients send no setting.
    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port,
                                           password=endpoint.keys.admin)
    try:
        with pytest.raises((StreamFailureError, DatabaseError), match="395"):
            with client.query_rows_stream(query, settings={"max_block_size": 1}) as rows:
                for _ in rows:
                    pass
        # ArrowStream's blocks are spliced into one stream.
        with client.query_arrow_stream(
                "SELECT number, toString(number) AS s FROM numbers(200000)") as batches:
            table = pa.Table.from_batches(list(batches))
        assert table.num_rows == 200_000 and table.column("s")[199_999].as_py() == "199999"
    finally:
        client.close()


def test_a_slow_reader_holds_the_query_back(endpoint: Endpoint) -> None:
    """About 900 MB of TSV read at a crawl: memory stays a few blocks, and hanging up stops
    the query."""
    params = urllib.parse.urlencode({"query": "SELECT number FROM numbers(100000000)"})
    before = rss_bytes()
    peak = before
    with socket.create_connection(("127.0.0.1", endpoint.port)) as conn:
        auth = basic(endpoint.keys.read)["Authorization"]
        conn.sendall(f"GET /?{params} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
                     .encode())
        conn.settimeout(30)
        received = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # the reader's pace is what is tested
            received += len(conn.recv(65536))
            peak = max(peak, rss_bytes())
            time.sleep(0.005)
        assert received > 0
    assert peak - before < 64 * 1024 * 1024, f"grew {(peak - before) >> 20} MiB"
    assert http(endpoint.url, key=endpoint.keys.read, body=b"SELECT 1").body == "1\n"


def test_queries_run_side_by_side(endpoint: Endpoint) -> None:
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(
        http(endpoint.url, key=endpoint.keys.read, body=b"SELECT sleep(1)").body))
        for _ in range(10)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert answers == ["0\n"] * 10 and elapsed < 1.6, elapsed


def test_a_client_that_hangs_up_stops_its_query(endpoint: Endpoint) -> None:
    params = urllib.parse.urlencode({"query": LONG_COUNT})
    auth = basic(endpoint.keys.read)["Authorization"]
    with socket.create_connection(("127.0.0.1", endpoint.port)) as conn:
        conn.sendall(f"GET /?{params} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
                     .encode())
        wait_for(lambda: running_long_counts(endpoint) == 1, timeout=10, what="the count to run")
    wait_for(lambda: running_long_counts(endpoint) == 0, timeout=5, what="the count to stop")
    started = time.monotonic()
    assert http(endpoint.url, key=endpoint.keys.read, body=b"SELECT 1").body == "1\n"
    assert time.monotonic() - started < 1.0


def test_kill_query_by_id_and_one_id_at_a_time(endpoint: Endpoint) -> None:
    answers: list[tuple[int, str, str]] = []

    def long_count() -> None:
        got = http(endpoint.url, key=endpoint.keys.read,
                   params={"query": LONG_COUNT, "query_id": "long-1"})
        answers.append((got.status, got.headers.get("X-ClickHouse-Exception-Code", ""), got.body))

    thread = threading.Thread(target=long_count)
    thread.start()
    try:
        wait_for(lambda: running_long_counts(endpoint) == 1, timeout=10, what="the count to run")
        twice = http(endpoint.url, key=endpoint.keys.read,
                     params={"query": "SELECT 1", "query_id": "long-1"})
        assert twice.headers["X-ClickHouse-Exception-Code"] == "216", twice.body
        # A read key may not kill (the guard: KILL QUERY is the writer's).
        refused = http(endpoint.url, key=endpoint.keys.read,
                       body=b"KILL QUERY WHERE query_id = 'long-1'")
        assert refused.headers["X-ClickHouse-Exception-Code"] == "497", refused.body
        killed = http(endpoint.url, key=endpoint.keys.admin,
                      body=b"KILL QUERY WHERE query_id = 'long-1' SYNC")
        assert killed.status == 200 and killed.body.startswith("finished\tlong-1\t"), killed.body
    finally:
        thread.join(30)
    assert answers and answers[0][1] == "394", answers  # QUERY_WAS_CANCELLED
    assert running_long_counts(endpoint) == 0


def test_over_the_limit_is_answered_not_queued(settings: Settings, clickhouse: Client) -> None:
    limits = SqlLimits.from_settings(settings)
    one = SqlLimits(limits.max_execution_s, limits.max_memory_mb, limits.max_result_rows,
                    limits.max_result_bytes, max_concurrent_queries=1)
    with serving(settings, one) as endpoint:
        answers: list[str] = []

        def run_slow() -> None:
            # Until admitted: a poll below may take the one slot first (a loaded machine).
            while (got := http(endpoint.url, key=endpoint.keys.read,
                               body=b"SELECT sleep(1)")).status == 503:
                pass
            answers.append(got.body)

        slow = threading.Thread(target=run_slow)
        slow.start()
        try:
            def refused() -> bool:
                got = http(endpoint.url, key=endpoint.keys.read, body=b"SELECT 1")
                return got.status == 503 and got.headers["X-ClickHouse-Exception-Code"] == "202"
            wait_for(refused, timeout=5, what="a 503 while the slow query runs")
        finally:
            slow.join(30)
        assert answers == ["0\n"]
