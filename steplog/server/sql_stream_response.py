"""A ResultStream sent as a chunked HTTP response, at the reader's pace.

The status and headers go out with the first block. Each next block is produced (on a worker
thread) only once the previous one has been handed to the socket and aiohttp's write has
drained below its buffer limit, so a slow reader holds the engine back: in memory there are
the block being sent and the one being produced, whatever the result's size.

An engine error after the first block cannot change the status any more: it is written into
the stream as ClickHouse's tagged exception block (sql_errors.exception_block), with the tag
announced in `X-ClickHouse-Exception-Tag`, so clients raise rather than return short results.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from steplog.server.sql_errors import SqlError, exception_block
from steplog.server.sql_output import ResponseBody
from steplog.server.sql_progress import ProgressiveResponse
from steplog.server.sql_stream import ResultStream

__all__ = ["exception_tag", "send_stream"]

Fetch = Callable[[Callable[[], bytes | None]], Awaitable[bytes | None]]
"""Runs the blocking producer (the next block, through the response's output chain) on a
worker thread."""


def exception_tag() -> str:
    """16 random lower-case letters and digits, as ClickHouse's tags."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


async def send_stream(
    request: web.Request, stream: ResultStream, first: bytes, body: ResponseBody,
    headers: Mapping[str, str], tag: str, fetch: Fetch, ended: Callable[[], Awaitable[None]],
    sent: frozenset[str] = frozenset(),
) -> web.StreamResponse:
    """Send `stream` whole: `first`, its first block as it goes out (through `body`, as every
    next block is, on a worker thread). `ended` (which closes the stream and frees its query
    and session) is awaited before the response's last bytes go, as ClickHouse releases a
    session before it finishes the response: a client that sends its next request as soon as
    it has read this one finds the session free. A client that goes away surfaces as
    ConnectionResetError or the handler's cancellation: the caller kills the query. `sent`:
    the headers already gone with progress headers (sql_progress), if any."""
    response = ProgressiveResponse(sent, headers={**headers, "X-ClickHouse-Exception-Tag": tag})
    await response.prepare(request)

    def produce() -> bytes | None:
        chunk = stream.next_chunk()
        return None if chunk is None else body.data(chunk)

    chunk: bytes | None = first
    try:
        while chunk is not None:
            if chunk:
                await response.write(chunk)
            chunk = await fetch(produce)
    except SqlError as error:
        await response.write(body.exception(exception_block(error, tag)))
    await ended()
    tail = body.end()
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response
