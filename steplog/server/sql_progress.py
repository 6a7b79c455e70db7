"""X-ClickHouse-Progress: headers sent while a query runs, before the first byte of its answer.

What ClickHouse's handler does with `send_progress_in_http_headers=1`
(WriteBufferFromHTTPServerResponse: onProgress, finishSendHeaders): while no byte of the body
has gone, each time the query progresses and `http_headers_progress_interval_ms` (100 by
default) have passed since the request came or since the last one, it sends the status line
and the headers set so far (the first time), then one header line
`X-ClickHouse-Progress: {"read_rows":"...",...}` with the running totals. When the body
starts, it ends the headers: `X-ClickHouse-Summary`, `X-ClickHouse-Exception-Code` if the
query failed (the status has gone as 200 by then; clients read the code header), the blank
line. So a streamed result has progress headers until its first block, and one answered
whole (`wait_end_of_query=1`, or a format that cannot stream) until the end of its query.

The figures are the engine's: chDB calls a connection's progress callback with the query's
running totals every 100 ms (its `interactive_delay`) while it reads, on the thread running
the query (EngineSession.watch). So an interval below 100 ms gives a header every 100 ms, and
a query that reads nothing for a while (`sleep`) sends none meanwhile, as in ClickHouse.
ClickHouse's recent `memory_usage` field is not sent: chDB reports no memory figure.

aiohttp writes a response's status line and headers in one go when it is prepared, so the head
(status line and headers known before the query runs) is written to the transport here, and
ProgressiveResponse then writes only the headers not yet sent and the blank line.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from steplog.server.sql_engine import QueryStats
from steplog.server.sql_errors import SqlError
from steplog.server.sql_headers import progress_json

__all__ = ["ProgressHeaders", "ProgressiveResponse", "QueryProgress", "progress_interval",
           "send_whole"]

_DEFAULT_INTERVAL_MS: Final = 100


class QueryProgress(Protocol):
    """What sql_execution tells of a query it runs (called on the worker thread)."""

    def started(self, fmt: str, timezone: str) -> None:
        """The query is about to run, answering in `fmt`: its headers are known."""

    def advanced(self, stats: QueryStats) -> None:
        """The engine's running totals (EngineSession.watch); must not raise."""


def progress_interval(params: Mapping[str, str]) -> float | None:
    """The seconds between a request's progress headers, None when it asks for none.
    SqlError naming the parameter when a value is not ClickHouse's."""
    asked = params.get("send_progress_in_http_headers", "0").strip().lower()
    if asked not in ("0", "1", "true", "false"):
        raise SqlError(36, "BAD_ARGUMENTS",
                       f"send_progress_in_http_headers must be 0 or 1, got {asked[:20]!r}")
    if asked in ("0", "false"):
        return None
    interval = params.get("http_headers_progress_interval_ms", str(_DEFAULT_INTERVAL_MS))
    if not interval.strip().isdigit():
        raise SqlError(36, "BAD_ARGUMENTS", "http_headers_progress_interval_ms must be a "
                       f"whole number of milliseconds, got {interval[:20]!r}")
    return int(interval) / 1000


class ProgressHeaders:
    """One request's progress headers. `started` and `advanced` come from the worker thread
    running the query; the lines are written on the event loop (in the order scheduled, so
    all before the loop learns the first block is ready); `close` (on the loop) stops them
    before the body starts."""

    def __init__(self, request: web.Request, interval_s: float, received: float,
                 head: Callable[[str, str], Mapping[str, str]]) -> None:
        """`head(fmt, timezone)`: the headers known before the query runs."""
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._interval = interval_s
        self._received = received
        self._head = head
        self._lock = threading.Lock()
        self._headers: Mapping[str, str] | None = None
        self._last = received
        self._closed = False
        self.sent: frozenset[str] = frozenset()
        """The names (lower-case) of the headers gone in the head; empty while none has."""

    def started(self, fmt: str, timezone: str) -> None:
        headers = self._head(fmt, timezone)
        with self._lock:
            self._headers = headers

    def advanced(self, stats: QueryStats) -> None:
        now = time.monotonic()
        with self._lock:
            if self._headers is None or now - self._last < self._interval:
                return
            self._last = now
            headers = self._headers
        try:
            self._loop.call_soon_threadsafe(self._send, headers, stats, now - self._received)
        except RuntimeError:
            pass  # the loop has closed: the server is stopping

    def _send(self, headers: Mapping[str, str], stats: QueryStats, elapsed_s: float) -> None:
        transport = self._request.transport
        if self._closed or transport is None or transport.is_closing():
            return  # the body has started, or the client has gone (its handler is cancelled)
        lines: list[str] = []
        if not self.sent:
            version = self._request.version
            lines.append(f"HTTP/{version.major}.{version.minor} 200 OK\r\n")
            lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
            self.sent = frozenset(name.lower() for name in headers)
        lines.append(f"X-ClickHouse-Progress: {progress_json(stats, elapsed_s, zeros=False)}"
                     "\r\n")
        transport.write("".join(lines).encode())

    def close(self) -> frozenset[str]:
        """No more progress headers: the body is about to start. The names of the headers
        already sent (ProgressiveResponse's `sent`), empty if none was."""
        self._closed = True
        return self.sent


class ProgressiveResponse(web.StreamResponse):
    """A StreamResponse whose status line and first headers may have gone already (`sent`:
    their names, lower-case, from ProgressHeaders.close): it then writes the other headers
    (the summary, an exception code, aiohttp's own) and the blank line, and its body as usual.
    Its status is then the one sent, 200, whatever it is set to."""

    def __init__(self, sent: frozenset[str], *, headers: Mapping[str, str]) -> None:
        super().__init__(headers=headers)
        self._sent_names = sent
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._transport = request.transport
        return await super().prepare(request)

    async def _write_headers(self) -> None:
        # aiohttp's step that serializes the status line and every header; its only override
        # here. The writer writes straight to the same transport, so the body follows these.
        if not self._sent_names:
            await super()._write_headers()
            return
        rest = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items()
                       if name.lower() not in self._sent_names)
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the client has gone")
        self._transport.write(f"{rest}\r\n".encode())


async def send_whole(request: web.Request, sent: frozenset[str], headers: Mapping[str, str],
                     body: bytes) -> web.StreamResponse:
    """`body` whole after a head that has gone (`sent`): an answer, or an error's exception
    block with `X-ClickHouse-Exception-Code` among `headers`, as ClickHouse sends an error
    once its response has started."""
    response = ProgressiveResponse(sent, headers=headers)
    await response.prepare(request)
    if body:
        await response.write(body)
    await response.write_eof()
    return response
