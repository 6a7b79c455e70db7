"""ClickHouse's HTTP interface, served over the embedded engine: the aiohttp application.

chDB lets one process own its files, and with the embedded default that process is the running
stack. So the stack answers SQL over HTTP the way a ClickHouse server does, and analysts point
what they already use at it: curl, clickhouse-connect, `steplog sql`, Grafana.

This module only wires the parts (docs/sql-endpoint.md has the design):
sql_auth (who asks, what they may do) -> sql_compression, sql_request (the request as
ClickHouse's handler reads it) -> admission (sql_stream_registry: the concurrency limit, query
ids) -> sql_execution on a worker thread (settings and limits, sql_guard, the engine session of
sql_engine) up to the first block -> the answer whole, or streamed (sql_stream_response), or
the error as ClickHouse sends it (sql_errors). A GET request is read-only whoever sends it, as
in ClickHouse. A client that hangs up has its query killed in the engine.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from aiohttp import web

from steplog.server.principals import KeyVerifier
from steplog.server.sql_auth import Access, authorize
from steplog.server.sql_compression import decompress
from steplog.server.sql_engine import Engine
from steplog.server.sql_errors import SqlError
from steplog.server.sql_execution import Answer, SqlExecutor
from steplog.server.sql_request import SqlRequest
from steplog.server.sql_settings import SqlLimits
from steplog.server.sql_stream import ResultStream
from steplog.server.sql_stream_registry import RunningQueries, RunningQuery
from steplog.server.sql_stream_response import exception_tag, send_stream

__all__ = ["serve_sql", "sql_app", "sql_endpoint_answers"]

_CONTENT_TYPES: Final = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "CSVWithNames": "text/csv; charset=UTF-8",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
}
_TEXT: Final = "text/tab-separated-values; charset=UTF-8"
_SERVER_NAME: Final = "steplog"
_QUERY_ID: Final = re.compile(r"^[!-~]{1,128}$")


def sql_app(
    executor: SqlExecutor, verifier: KeyVerifier, default_database: str, *, max_concurrent: int,
) -> web.Application:
    """The aiohttp application answering ClickHouse HTTP requests.

    It decodes Content-Encoding itself (aiohttp knows neither lz4 nor ClickHouse's error
    format), so run it with aiohttp's own request decompression off (`auto_decompress=False`,
    as `serve_sql` does): otherwise gzip, deflate and zstd bodies would be decoded twice. And
    with `handler_cancellation=True`, so that a client that hangs up cancels its handler, which
    kills its query in the engine.
    """
    # One worker per query in flight is enough: a query holds one only while the engine
    # produces its next block, and admission (RunningQueries) caps the queries in flight.
    workers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="steplog-sql")
    running = RunningQueries(max_concurrent)

    async def stop_workers(_: web.Application) -> None:
        workers.shutdown(wait=False, cancel_futures=True)

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def kill(query: RunningQuery) -> None:
        try:
            executor.engine.kill([query.engine_tag])
        except SqlError:
            pass  # it has ended by itself meanwhile, or the engine is closing

    def abandon(query: RunningQuery, stream: ResultStream) -> None:
        """Stop a streaming query whose client has gone, then free it. Blocking."""
        try:
            kill(query)
        finally:
            stream.close()  # waits for a block being produced: killed, it ends at once
            running.release(query)

    def abandon_starting(query: RunningQuery, started: Future[Answer | ResultStream]) -> None:
        """Stop a query whose client has gone before its first block, and free it once its
        worker has returned (or at once if it never started)."""
        def free(future: Future[Answer | ResultStream]) -> None:
            if not future.cancelled() and future.exception() is None:
                outcome = future.result()
                if isinstance(outcome, ResultStream):
                    outcome.close()
            running.release(query)

        started.add_done_callback(free)
        if not started.cancelled():
            # A kill before the engine has the query (still in the guard) finds nothing; the
            # query then ends at its first block (closed above) or by max_execution_time.
            kill(query)

    async def handle(request: web.Request) -> web.StreamResponse:
        if "query" not in request.query and not request.body_exists:
            return web.Response(text="Ok.\n")  # ClickHouse's answer to a bare GET /
        query_id = str(uuid.uuid4())
        try:
            query_id = _query_id(request.query.get("query_id")) or query_id
            _, access = authorize(verifier, request.headers, request.query)
            if request.method == "GET":
                access = Access.READ
            body = decompress(request.headers.get("Content-Encoding", ""), await request.read())
            sql = SqlRequest.read(request.query, request.headers, body, default_database)
            query = running.admit(query_id)
        except SqlError as error:
            return _error_response(error, query_id)
        loop = asyncio.get_running_loop()
        started = workers.submit(executor.start, sql, access, query, running,
                                 buffered=request.query.get("wait_end_of_query") == "1")
        try:
            outcome = await asyncio.wrap_future(started)
        except SqlError as error:
            running.release(query)
            return _error_response(error, query_id)
        except BaseException:  # cancelled: the client has gone before the first block
            loop.run_in_executor(None, abandon_starting, query, started)
            raise
        if isinstance(outcome, Answer):
            running.release(query)
            return _answer_response(outcome, query_id)
        try:
            response = await send_stream(
                request, outcome, _headers(outcome.format, query_id), exception_tag(),
                lambda produce: loop.run_in_executor(workers, produce),
            )
        except BaseException:  # the client has gone part way (reset, or cancelled)
            loop.run_in_executor(None, abandon, query, outcome)
            raise
        outcome.close()
        running.release(query)
        return response

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.on_cleanup.append(stop_workers)
    app.router.add_get("/ping", ping)
    app.router.add_route("GET", "/", handle)
    app.router.add_route("POST", "/", handle)
    return app


def _query_id(sent: str | None) -> str | None:
    """The client's query id, echoed in a header: printable ASCII only (a header cannot carry
    a control character, and one would be a header injection)."""
    if not sent or _QUERY_ID.match(sent):
        return sent or None
    raise SqlError(36, "BAD_ARGUMENTS",
                   "query_id must be 1 to 128 printable ASCII characters without spaces")


def _answer_response(answer: Answer, query_id: str) -> web.Response:
    return web.Response(body=answer.body, headers=_headers(answer.format, query_id))


def _headers(fmt: str, query_id: str) -> dict[str, str]:
    return {
        "Content-Type": _CONTENT_TYPES.get(fmt, _TEXT),
        "X-ClickHouse-Format": fmt,
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Server-Display-Name": _SERVER_NAME,
    }


def _error_response(error: SqlError, query_id: str) -> web.Response:
    headers = {
        "X-ClickHouse-Exception-Code": str(error.code),
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Server-Display-Name": _SERVER_NAME,
    }
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="ClickHouse server", charset="UTF-8"'
    return web.Response(status=error.status, text=error.body(), headers=headers)


async def serve_sql(
    engine_path: Path, default_database: str, verifier: KeyVerifier, limits: SqlLimits,
    *, host: str = "127.0.0.1", port: int = 8123,
) -> web.AppRunner:
    """Start answering on host:port for the engine at `engine_path` (which this process has
    opened); the caller stops it with `await runner.cleanup()`."""
    executor = await asyncio.get_running_loop().run_in_executor(
        None, SqlExecutor.open, Engine(engine_path), limits
    )
    runner = web.AppRunner(
        sql_app(executor, verifier, default_database,
                max_concurrent=limits.max_concurrent_queries),
        access_log=None, auto_decompress=False, handler_cancellation=True,
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
