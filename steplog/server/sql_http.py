"""ClickHouse's HTTP interface, served over the embedded engine: the aiohttp application.

chDB lets one process own its files, and with the embedded default that process is the running
stack. So the stack answers SQL over HTTP the way a ClickHouse server does, and analysts point
what they already use at it: curl, clickhouse-connect, `steplog sql`, Grafana.

This module only wires the parts (docs/sql-endpoint.md has the design):
sql_auth (who asks, what they may do) -> sql_body (the body read as it arrives: its
Content-Encoding, then `decompress=1`, spooled to disk past a MiB), sql_request (the request
as ClickHouse's handler reads it; multipart parts one by one) -> admission (sql_stream_registry: the concurrency limit, query ids; sql_sessions: the
kept session a `session_id` names) -> sql_execution on a worker thread (settings and limits,
sql_guard, the engine session of sql_engine) up to the first block -> the answer whole, or
streamed (sql_stream_response), through the output chain of sql_output (the Native layout of
`client_protocol_version`, `compress=1`, HTTP compression) with sql_headers' headers, or the
error as ClickHouse sends it (sql_errors). A GET request is read-only whoever sends it, as in
ClickHouse. A client that hangs up has its query killed in the engine. With
`send_progress_in_http_headers=1` the head goes out while the query runs, with
`X-ClickHouse-Progress` lines (sql_progress), and the answer or error follows it.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from aiohttp import web

from steplog.server.principals import KeyVerifier
from steplog.server.sql_auth import Access, authorize
from steplog.server.sql_blocks import BlockWriter
from steplog.server.sql_body import decoded_body
from steplog.server.sql_compression import response_encoder
from steplog.server.sql_engine import Engine, QueryStats
from steplog.server.sql_errors import SqlError, exception_block
from steplog.server.sql_execution import Answer, SqlExecutor
from steplog.server.sql_headers import SERVER_NAME, answer_headers
from steplog.server.sql_native import native_layout
from steplog.server.sql_output import ResponseBody
from steplog.server.sql_progress import ProgressHeaders, progress_interval, send_whole
from steplog.server.sql_request import SqlRequest
from steplog.server.sql_sessions import SessionSpec, SqlSessions
from steplog.server.sql_settings import SqlLimits
from steplog.server.sql_stream import ResultStream
from steplog.server.sql_stream_registry import RunningQueries, RunningQuery
from steplog.server.sql_stream_response import exception_tag, send_stream

__all__ = ["serve_sql", "sql_app", "sql_endpoint_answers"]

_QUERY_ID: Final = re.compile(r"^[!-~]{1,128}$")


def sql_app(
    executor: SqlExecutor, verifier: KeyVerifier, default_database: str, *, max_concurrent: int,
    max_body_bytes: int,
) -> web.Application:
    """The aiohttp application answering ClickHouse HTTP requests.

    It decodes Content-Encoding itself (aiohttp knows neither lz4 nor ClickHouse's error
    format), so run it with aiohttp's own request decompression off (`auto_decompress=False`,
    as `serve_sql` does): otherwise gzip, deflate and zstd bodies would be decoded twice. And
    with `handler_cancellation=True`, so that a client that hangs up cancels its handler, which
    kills its query in the engine. A body is read as a stream (sql_body), at most
    `max_body_bytes` of it decoded: aiohttp's own limit (client_max_size) holds only for
    `request.read()`, which is never called.
    """
    # One worker per query in flight is enough: a query holds one only while the engine
    # produces its next block, and admission (RunningQueries) caps the queries in flight.
    workers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="steplog-sql")
    running = RunningQueries(max_concurrent)
    sessions = SqlSessions()

    async def stop_workers(_: web.Application) -> None:
        workers.shutdown(wait=False, cancel_futures=True)
        sessions.close_all()

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def kill(query: RunningQuery) -> None:
        """Cancel the query in the engine without waiting: the caller then closes its stream
        (or frees it once its worker returns), which is what ends it (Engine.kill)."""
        try:
            executor.engine.kill([query.engine_tag], wait=False)
        except SqlError:
            pass  # it has ended by itself meanwhile, or the engine is closing

    def abandon(query: RunningQuery, stream: ResultStream, finished: Callable[[], None]) -> None:
        """Stop a streaming query whose client has gone (or whose first block cannot be
        sent), then free it. Blocking."""
        try:
            kill(query)
        finally:
            stream.close()  # waits for a block being produced: killed, it ends at once
            finished()

    def abandon_starting(query: RunningQuery, started: Future[Answer | ResultStream],
                         finished: Callable[[], None]) -> None:
        """Stop a query whose client has gone before its first block, and free it once its
        worker has returned (or at once if it never started)."""
        def free(future: Future[Answer | ResultStream]) -> None:
            if not future.cancelled() and future.exception() is None:
                outcome = future.result()
                if isinstance(outcome, ResultStream):
                    outcome.close()
            finished()

        started.add_done_callback(free)
        if not started.cancelled():
            # A kill before the engine has the query (still in the guard) finds nothing; the
            # query then ends at its first block (closed above) or by max_execution_time.
            kill(query)

    async def handle(request: web.Request) -> web.StreamResponse:
        if "query" not in request.query and not request.body_exists:
            return web.Response(text="Ok.\n")  # ClickHouse's answer to a bare GET /
        received = time.monotonic()
        query_id = str(uuid.uuid4())
        tag = exception_tag()
        try:
            query_id = _query_id(request.query.get("query_id")) or query_id
            interval = progress_interval(request.query)
            principal, access = authorize(verifier, request.headers, request.query)
            if request.method == "GET":
                access = Access.READ
            layout = native_layout(request.query.get("client_protocol_version"))
            encoder = response_encoder(request)
            spec = SessionSpec.read(request.query)
            body = decoded_body(request.content.iter_any(),
                                request.headers.get("Content-Encoding", ""),
                                _flag(request.query, "decompress"), max_body_bytes)
            sql = await SqlRequest.read(request.query, request.headers, body, default_database)
        except SqlError as error:
            return _error_response(error, query_id)
        try:
            query = running.admit(query_id)
        except SqlError as error:
            sql.close()
            return _error_response(error, query_id)
        try:
            held = sessions.acquire(principal.key_id, spec, access) if spec else None
        except SqlError as error:
            sql.close()
            running.release(query)
            return _error_response(error, query_id)

        def finished() -> None:
            running.release(query)
            if held is not None:
                sessions.release(held, close=spec is not None and spec.close)

        progress = None if interval is None else ProgressHeaders(
            request, interval, received, lambda fmt, timezone: {
                **answer_headers(fmt, query_id, timezone, None, 0.0),
                "X-ClickHouse-Exception-Tag": tag})
        sent: frozenset[str] = frozenset()  # the headers gone with progress, if any
        blocks = BlockWriter() if _flag(request.query, "compress") else None

        async def failed(error: SqlError) -> web.StreamResponse:
            if not sent:
                return _error_response(error, query_id)
            out = ResponseBody(None, blocks, encoder)
            headers = {"X-ClickHouse-Exception-Code": str(error.code)}
            if out.content_encoding:
                headers["Content-Encoding"] = out.content_encoding
            return await send_whole(request, sent, headers,
                                    out.exception(exception_block(error, tag)) + out.end())

        loop = asyncio.get_running_loop()
        try:
            started = workers.submit(executor.start, sql, access, query, running,
                                     buffered=_flag(request.query, "wait_end_of_query"),
                                     held=held, progress=progress)
        except BaseException:  # the app is stopping
            sql.close()
            finished()
            raise
        # The body's spools are read only up to the first block (external tables loaded, an
        # INSERT's rows inserted): freed once the start has ended, however it ended, even
        # when the client has gone meanwhile (its worker may still be reading them).
        started.add_done_callback(lambda _: sql.close())
        try:
            outcome = await asyncio.wrap_future(started)
        except SqlError as error:
            finished()
            sent = progress.close() if progress else sent
            return await failed(error)
        except BaseException:  # cancelled: the client has gone before the first block
            if progress:
                progress.close()
            loop.run_in_executor(None, abandon_starting, query, started, finished)
            raise
        # Every progress line scheduled has been written (the loop runs them in order).
        sent = progress.close() if progress else sent
        out = ResponseBody(layout if outcome.format == "Native" else None, blocks, encoder)
        if isinstance(outcome, Answer):
            try:
                data = await loop.run_in_executor(workers, out.data, outcome.body)
            except SqlError as error:
                return await failed(error)
            finally:
                finished()
            headers = _headers(outcome.format, query_id, outcome.timezone, outcome.stats,
                               received, out)
            if sent:
                return await send_whole(request, sent, headers, data + out.end())
            return web.Response(body=data + out.end(), headers=headers)
        headers = _headers(outcome.format, query_id, outcome.timezone, outcome.stats, received,
                           out)
        stream = outcome
        ended = False

        async def end() -> None:
            nonlocal ended
            # Closing hands a kept session back, which sets its settings back: off the loop.
            await loop.run_in_executor(None, stream.close)
            ended = True
            finished()

        try:
            # Before the status goes: a block the client's layout cannot hold is an HTTP error.
            first = await loop.run_in_executor(workers, out.data, outcome.first)
            return await send_stream(
                request, outcome, first, out, headers, tag,
                lambda produce: loop.run_in_executor(workers, produce), end, sent,
            )
        except SqlError as error:
            loop.run_in_executor(None, abandon, query, outcome, finished)
            return await failed(error)
        except BaseException:  # the client has gone part way (reset, or cancelled)
            if not ended:
                loop.run_in_executor(None, abandon, query, outcome, finished)
            raise

    app = web.Application()
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


def _flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "0").strip().lower() in ("1", "true")


def _headers(fmt: str, query_id: str, timezone: str, stats: QueryStats, received: float,
             out: ResponseBody) -> dict[str, str]:
    headers = answer_headers(fmt, query_id, timezone, stats, time.monotonic() - received)
    if out.content_encoding:
        headers["Content-Encoding"] = out.content_encoding
    return headers


def _error_response(error: SqlError, query_id: str) -> web.Response:
    headers = {
        "X-ClickHouse-Exception-Code": str(error.code),
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Server-Display-Name": SERVER_NAME,
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
                max_concurrent=limits.max_concurrent_queries,
                max_body_bytes=limits.max_body_bytes),
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
