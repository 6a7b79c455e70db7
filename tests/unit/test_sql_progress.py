"""The progress and summary headers' JSON, checked against ClickHouse's documented examples.

From ClickHouse's "HTTP Interface" page (docs/interfaces/http.md): a progress header sequence,
and the summary of `SELECT 1` in its raw-response example. ClickHouse 25.x adds
`memory_usage`, which chDB does not report: the endpoint's JSON is the documented one without
it, byte for byte.
"""

from __future__ import annotations

import json

import pytest

from steplog.server.sql_engine import QueryStats
from steplog.server.sql_errors import SqlError
from steplog.server.sql_headers import progress_json
from steplog.server.sql_progress import progress_interval

DOCUMENTED_PROGRESS = (
    '{"read_rows":"261636","read_bytes":"2093088","total_rows_to_read":"1000000",'
    '"elapsed_ns":"14050417","memory_usage":"22205975"}'
)
DOCUMENTED_SUMMARY = (
    '{"read_rows":"1","read_bytes":"1","written_rows":"0","written_bytes":"0",'
    '"total_rows_to_read":"1","result_rows":"0","result_bytes":"0","elapsed_ns":"4505959",'
    '"memory_usage":"1111711"}'
)


def without_memory_usage(documented: str) -> str:
    fields = json.loads(documented)
    del fields["memory_usage"]
    return json.dumps(fields, separators=(",", ":"))


def test_progress_json_is_clickhouses_without_its_zero_fields() -> None:
    stats = QueryStats(read_rows=261636, read_bytes=2093088, total_rows_to_read=1000000)
    assert progress_json(stats, 0.014050417, zeros=False) == without_memory_usage(
        DOCUMENTED_PROGRESS)


def test_summary_json_is_clickhouses_with_every_field() -> None:
    stats = QueryStats(read_rows=1, read_bytes=1, total_rows_to_read=1)
    assert progress_json(stats, 0.004505959, zeros=True) == without_memory_usage(
        DOCUMENTED_SUMMARY)


def test_progress_is_asked_by_the_two_parameters() -> None:
    assert progress_interval({}) is None
    assert progress_interval({"send_progress_in_http_headers": "0"}) is None
    assert progress_interval({"send_progress_in_http_headers": "1"}) == 0.1
    assert progress_interval({"send_progress_in_http_headers": "true",
                              "http_headers_progress_interval_ms": "120000"}) == 120.0


@pytest.mark.parametrize("params, named", [
    ({"send_progress_in_http_headers": "yes"}, "send_progress_in_http_headers"),
    ({"send_progress_in_http_headers": "1", "http_headers_progress_interval_ms": "-5"},
     "http_headers_progress_interval_ms"),
])
def test_a_bad_progress_parameter_is_named(params: dict[str, str], named: str) -> None:
    with pytest.raises(SqlError, match=named) as raised:
        progress_interval(params)
    assert raised.value.code == 36
