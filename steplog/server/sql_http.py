"""ClickHouse's HTTP interface, served over the embedded engine (a subset).

chDB lets one process own its files, and with the embedded default that process is the running
stack. So the stack answers SQL over HTTP the way a ClickHouse server does, and analysts point
what they already use at it: `curl`, clickhouse-connect's HTTP client, `steplog sql`, Grafana.

The subset: the query in the `query` parameter or in the POST body (with `query` in the URL the
body is INSERT data), `default_format` or a `FORMAT` clause, `database`, `param_<name>` for
`{name:Type}` placeholders, other parameters as query settings, `/ping`, and errors as ClickHouse
sends them (status, `X-ClickHouse-Exception-Code`, "Code: N. DB::Exception: ..." body).
Queries run in worker threads so a slow query never stalls the processors' event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import sys
import threading
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from typing import Protocol

from aiohttp import web
from clickhouse_connect.driver.client import Client

DEFAULT_FORMAT = "TabSeparated"
# Parameters that steer the HTTP exchange itself; never forwarded as query settings.
_TRANSPORT_PARAMETERS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "wait_end_of_query",
        "buffer_size",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "client_protocol_version",
        "quota_key",
        "role",
    }
)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?(?P<table>[\w.`\"]+)\s*"
    r"(?:\((?P<columns>[^)]*)\))?\s*(?:FORMAT\s+(?P<format>\w+))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_INLINE_INSERT = re.compile(
    rb"^(\s*INSERT\s+INTO\s[^\n]*?\bFORMAT\s+\w+)[ \t]*\r?\n", re.IGNORECASE
)
_IS_INSERT = re.compile(r"^\s*INSERT\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "CSVWithNames": "text/csv; charset=UTF-8",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
}
# The statuses ClickHouse's HTTP handler gives error codes (exceptionCodeToHTTPStatus);
# everything else is a 500.
_STATUS_BY_CODE = {
    194: 401,  # REQUIRED_PASSWORD
    **dict.fromkeys((192, 193, 516, 512), 403),  # UNKNOWN_USER, WRONG_PASSWORD, ...
    # BAD_ARGUMENTS, CANNOT_PARSE_*, DUPLICATE_COLUMN, ILLEGAL_COLUMN, ..._AST, SYNTAX_ERROR,
    # INCORRECT_DATA, TYPE_MISMATCH, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    **dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168,
         223, 62, 117, 53, 321),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _DATABASE, _SETTING,
    # _DIRECTION_OF_SORTING, _AGGREGATE_FUNCTION, _FORMAT, _DATABASE_ENGINE, _TYPE_OF_QUERY, _ROLE
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((209, 76, 439), 503),  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, CANNOT_SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
}


class SqlRequest:
    """One HTTP request read into what the engine needs."""

    def __init__(self, parameters: Mapping[str, str], body: bytes, default_database: str) -> None:
        query = parameters.get("query")
        self.data: bytes | None = None
        if query is None:
            # Like ClickHouse: an INSERT's data may follow its query in the body, after the
            # line that names the format.
            inline = _INLINE_INSERT.match(body)
            if inline:
                query, self.data = inline.group(1).decode("utf-8"), body[inline.end():]
            else:
                query = body.decode("utf-8", errors="replace")
        elif body:
            self.data = body
        self.query = query.strip()
        self.database = parameters.get("database", default_database)
        clause = _FORMAT_CLAUSE.search(self.query)
        self.format = clause.group(1) if clause else parameters.get("default_format", DEFAULT_FORMAT)
        self.format_in_query = clause is not None
        self.parameters = {k[len("param_"):]: v for k, v in parameters.items() if k.startswith("param_")}
        self.settings = {
            k: v for k, v in parameters.items()
            if k not in _TRANSPORT_PARAMETERS and not k.startswith("param_")
        }


def execute(client: Client, request: SqlRequest) -> bytes:
    """Run one request on the engine (blocking); ClickHouse's own errors propagate."""
    query = request.query
    if request.data is not None:
        insert = _INSERT.match(query)
        if insert is None:
            # Like ClickHouse: the body continues the query in the URL
            # (`?query=INSERT INTO t VALUES` with the rows in the body).
            query = f"{query}\n{request.data.decode('utf-8')}"
            return _run_query(client, query, request)
        table = insert.group("table").replace("`", "").replace('"', "")
        if "." not in table:
            table = f"{request.database}.{table}"
        columns = [c.strip().strip('`"') for c in (insert.group("columns") or "").split(",") if c.strip()]
        client.raw_insert(
            table,
            columns or None,
            request.data,
            settings=request.settings or None,
            fmt=insert.group("format") or request.format,
        )
        return b""
    return _run_query(client, query, request)


def _run_query(client: Client, query: str, request: SqlRequest) -> bytes:
    # An INSERT's inline data (VALUES ...) ends the statement: a FORMAT appended after it
    # would be read as more data. ClickHouse ignores the output format for INSERTs anyway.
    output = None if request.format_in_query or _IS_INSERT.match(query) else request.format
    return client.raw_query(
        query,
        parameters={name: Verbatim(text) for name, text in request.parameters.items()} or None,
        settings=request.settings or None,
        fmt=output,
    )


class Verbatim:
    """A `param_<name>` value as the client sent it. ClickHouse reads the text itself (an
    array as `['a','b']`, a string with its escapes); clickhouse-connect would escape a str once
    more, but passes any other object through as its str()."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


ClientFactory = Callable[[str], Client]
"""Opens a client whose default database is the given one."""


def sql_app(open_client: ClientFactory, default_database: str) -> web.Application:
    """The aiohttp application answering ClickHouse HTTP requests.

    It decodes Content-Encoding itself (aiohttp knows neither lz4 nor ClickHouse's error
    format), so run it with aiohttp's own request decompression off (`auto_decompress=False`,
    as `serve_sql` does): otherwise gzip, deflate and zstd bodies would be decoded twice.
    """
    clients: dict[str, Client] = {}
    opening = threading.Lock()

    def client_for(database: str) -> Client:
        # One client per default database keeps each request's database exact without `USE`,
        # which would leak between concurrent requests sharing a session. Requests run in
        # worker threads, so two first requests on one database must not both open one.
        with opening:
            if database not in clients:
                clients[database] = open_client(database)
            return clients[database]

    async def close_clients(_: web.Application) -> None:
        with opening:
            for client in clients.values():
                client.close()
            clients.clear()

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def handle(request: web.Request) -> web.Response:
        try:
            body = decompress(request.headers.get("Content-Encoding", ""), await request.read())
        except ValueError as exc:
            return _error_response(exc)
        sql = SqlRequest(request.query, body, default_database)
        if not sql.query:
            return web.Response(text="Ok.\n")
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                None, lambda: execute(client_for(sql.database), sql)
            )
        except Exception as exc:  # everything the engine says is the client's answer
            return _error_response(exc)
        return web.Response(
            body=answer,
            headers={
                "Content-Type": _CONTENT_TYPES.get(sql.format, "text/tab-separated-values; charset=UTF-8"),
                "X-ClickHouse-Format": sql.format,
                "X-ClickHouse-Server-Display-Name": "steplog",
            },
        )

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.on_cleanup.append(close_clients)
    app.router.add_get("/ping", ping)
    app.router.add_route("GET", "/", handle)
    app.router.add_route("POST", "/", handle)
    return app


def decompress(encoding: str, body: bytes) -> bytes:
    """The request body without its Content-Encoding (clickhouse-connect sends lz4 or zstd)."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return body
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return _every_part(body, zlib.decompressobj, "stream")
        if encoding == "lz4":
            import lz4.frame  # clickhouse-connect's own dependency

            return _every_part(body, lz4.frame.LZ4FrameDecompressor, "frame")
        if encoding == "zstd":
            # clickhouse-connect's own zstd: the standard library's from Python 3.14, the
            # backport before (the `zstandard` package is not installed with it).
            if sys.version_info >= (3, 14):
                from compression import zstd
            else:
                from backports import zstd

            return bytes(zstd.decompress(body))
    except Exception as exc:
        raise ValueError(
            f"Code: 432. DB::Exception: cannot decompress the {encoding} request body: {exc}. "
            "(UNKNOWN_CODEC)"
        ) from exc
    raise ValueError(
        f"Code: 432. DB::Exception: unsupported Content-Encoding {encoding!r}; "
        "use gzip, deflate, lz4, zstd or none. (UNKNOWN_CODEC)"
    )


class _Decompressor(Protocol):
    """One frame or stream at a time: lz4.frame's and zlib's decompressors alike."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, /) -> bytes: ...


def _every_part(body: bytes, new_part: Callable[[], _Decompressor], unit: str) -> bytes:
    """Every frame (or stream) of the body, concatenated. clickhouse-connect compresses each
    block of an insert as an lz4 frame of its own, and `lz4.frame.decompress` (as
    `zlib.decompress`) stops after the first and drops the rest without a word: an insert of
    more than one block (16,384 rows of 200 bytes) lost all but its first block."""
    parts: list[bytes] = []
    rest = body
    while rest:
        part = new_part()
        parts.append(part.decompress(rest))
        if not part.eof:
            raise ValueError(f"the last {unit} is cut short ({len(rest)} bytes from its start)")
        rest = part.unused_data
    return b"".join(parts)


def _error_response(exc: Exception) -> web.Response:
    message = str(exc).strip()
    found = _ERROR_CODE.search(message)
    code = int(found.group(1)) if found else 1000
    if not found:
        message = f"Code: {code}. DB::Exception: {message}"
    return web.Response(
        status=_STATUS_BY_CODE.get(code, 500),
        text=message[message.find("Code:"):] + "\n",
        headers={"X-ClickHouse-Exception-Code": str(code)},
    )


async def serve_sql(
    open_client: ClientFactory, default_database: str, *, host: str = "127.0.0.1", port: int = 8123
) -> web.AppRunner:
    """Start answering on host:port; the caller stops it with `await runner.cleanup()`."""
    runner = web.AppRunner(
        sql_app(open_client, default_database), access_log=None, auto_decompress=False
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def sql_endpoint_answers(port: int, timeout: float = 2.0) -> bool:
    """Whether the SQL endpoint on 127.0.0.1:`port` answers `/ping` within `timeout` seconds:
    what whoever starts the processors waits for (they serve it once they run)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=timeout):
            return True
    except OSError:
        return False
