"""The response headers of a SQL answer, as ClickHouse's HTTP handler sets them.

- `Content-Type`: the output format's own (each ClickHouse output format names one:
  IOutputFormat::getContentType): TSV families `text/tab-separated-values`, CSV `text/csv` with
  `header=present|absent`, JSON documents `application/json`, one-JSON-per-line formats
  `application/x-ndjson`, XML `application/xml`, Markdown `text/markdown`, binary formats
  `application/octet-stream`, the rest (Pretty, Vertical, Values, ...) `text/plain`.
- `X-ClickHouse-Format`, `X-ClickHouse-Query-Id`, `X-ClickHouse-Server-Display-Name`.
- `X-ClickHouse-Timezone`: the query's time zone (`session_timezone`, else the server's), which
  clients use to read DateTime values that carry none.
- `X-ClickHouse-Summary`: the engine's counters as ClickHouse's JSON (numbers as strings). They
  go with the headers, so for a streamed result they are those of its first block, as
  ClickHouse's are the progress made when its headers went out.
- `X-ClickHouse-Progress` (sql_progress) is the same JSON without its zero fields, as
  ClickHouse's progress headers (ProgressValues::writeJSON without zeros; the summary with).
"""

from __future__ import annotations

import json
from typing import Final

from steplog.server.sql_engine import QueryStats

__all__ = ["SERVER_NAME", "answer_headers", "content_type", "progress_json"]

SERVER_NAME: Final = "steplog"
_BINARY: Final = frozenset({
    "Native", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro", "AvroConfluent", "MsgPack",
    "Protobuf", "ProtobufSingle", "ProtobufList", "CapnProto", "BSONEachRow", "RawBLOB", "Npy",
    "One",
})
_TSV_PREFIXES: Final = ("TabSeparated", "TSV")
_TSV: Final = frozenset({"TSKV", "Raw"})
_NDJSON: Final = frozenset({"JSONLines", "NDJSON"})
_TEXT: Final = "text/plain; charset=UTF-8"


def content_type(fmt: str) -> str:
    if fmt in _BINARY or fmt.startswith("RowBinary"):
        return "application/octet-stream"
    if fmt.startswith(_TSV_PREFIXES) or fmt in _TSV:
        return "text/tab-separated-values; charset=UTF-8"
    if fmt.startswith("CSV"):
        header = "present" if "WithNames" in fmt else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if fmt.startswith("JSON") or fmt == "PrettyJSONEachRow":
        if "EachRow" in fmt or fmt in _NDJSON:
            return "application/x-ndjson; charset=UTF-8"
        return "application/json; charset=UTF-8"
    if fmt == "XML":
        return "application/xml; charset=UTF-8"
    if fmt in ("Markdown", "MD"):
        return "text/markdown; charset=UTF-8"
    return _TEXT


def answer_headers(fmt: str, query_id: str, timezone: str, stats: QueryStats | None,
                   elapsed_s: float) -> dict[str, str]:
    """The headers of a successful answer in `fmt`; `elapsed_s` since the request came.
    Without `stats`, those known before the query runs (no summary): what a response's head
    sent early with progress headers holds."""
    headers = {
        "Content-Type": content_type(fmt),
        "X-ClickHouse-Format": fmt,
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Server-Display-Name": SERVER_NAME,
    }
    if stats is not None:
        headers["X-ClickHouse-Summary"] = progress_json(stats, elapsed_s, zeros=True)
    if timezone:
        headers["X-ClickHouse-Timezone"] = timezone
    return headers


def progress_json(stats: QueryStats, elapsed_s: float, *, zeros: bool) -> str:
    """ClickHouse's progress JSON (its fields in its order, numbers as strings, no spaces);
    fields that are 0 left out unless `zeros`."""
    fields = {
        "read_rows": stats.read_rows, "read_bytes": stats.read_bytes,
        "written_rows": stats.written_rows, "written_bytes": stats.written_bytes,
        "total_rows_to_read": stats.total_rows_to_read, "result_rows": stats.result_rows,
        "result_bytes": stats.result_bytes, "elapsed_ns": int(elapsed_s * 1e9),
    }
    return json.dumps({name: str(value) for name, value in fields.items() if zeros or value},
                      separators=(",", ":"))
