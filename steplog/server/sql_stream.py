"""A result streamed as the engine produces it, and which formats can be.

chDB's `send_query` hands out a result block by block, each block a whole document of the
format. Where documents concatenate into one valid document the blocks go out as they are;
ArrowStream blocks are spliced into one stream (sql_stream_arrow), the *WithNames(AndTypes)
families have the header each block repeats cut (sql_stream_names); every other format
is answered whole, held in memory up to `max_result_bytes` (the engine's limit stops it past
that): JSON, Pretty, XML, Parquet, Arrow (file). Checked on chDB 4.4 by comparing the
concatenated blocks of a 3-block result with the engine's whole answer (docs/sql-endpoint.md
lists the formats; tests/integration/test_sql_stream_formats.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from steplog.server.sql_engine import EngineSession, EngineStream, QueryStats
from steplog.server.sql_stream_arrow import ArrowStreamSplicer
from steplog.server.sql_stream_names import NAMED_FORMATS, HeaderCutter

__all__ = ["ResultStream", "streams"]

_AS_IS: Final = frozenset({
    "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "Raw", "CSV", "JSONEachRow", "JSONLines",
    "NDJSON", "JSONStringsEachRow", "JSONCompactEachRow", "JSONCompactStringsEachRow",
    "RowBinary", "Native", "TSKV", "LineAsString", "CustomSeparated", "BSONEachRow", "MsgPack",
    "RawBLOB",
})
_SPLICED: Final = frozenset({"ArrowStream"})
# An empty result of these is not empty bytes (a header block, a schema): see ResultStream.
_EMPTY_HAS_BYTES: Final = frozenset({"Native", "ArrowStream", *NAMED_FORMATS})


def streams(fmt: str) -> bool:
    """Whether a result in `fmt` can be sent while the engine produces it."""
    return fmt in _AS_IS or fmt in _SPLICED or fmt in NAMED_FORMATS


class ResultStream:
    """One SELECT's result in `fmt`, in a session the stream holds until `close`, which then
    calls `finish` (closing a request's own session, or handing back a kept one).

    `first` is the first block, already produced (so that an error before any byte goes out
    is an HTTP error); `next_chunk` produces each next one, only when asked: the reader's pace
    sets the engine's. Blocking, one thread at a time; `close` waits for a running `next_chunk`
    (kill the query first to make that immediate).
    """

    def __init__(
        self, session: EngineSession, sql: str, params: dict[str, str], fmt: str,
        finish: Callable[[], None], timezone: str = "",
    ) -> None:
        self.format = fmt
        self.timezone = timezone
        self.stats: QueryStats
        """What the engine reported with the first block (the summary's counters)."""
        self._lock = threading.Lock()
        self._closed = False
        self._finish = finish
        self._arrow = ArrowStreamSplicer() if fmt in _SPLICED else None
        self._names = HeaderCutter(fmt) if fmt in NAMED_FORMATS else None
        self._engine: EngineStream = session.stream(sql, params, fmt)
        block = self._engine.next()
        if block is None and fmt in _EMPTY_HAS_BYTES:
            # No block at all: the engine's whole answer for an empty result (the columns'
            # header, the schema). This runs the query a second time; it produced nothing.
            self._engine.cancel()
            whole = session.run(sql, params, fmt)
            self.first = whole.data
            self.stats = whole.stats
            self._arrow = None
            self._done = True
        else:
            self.stats = self._engine.stats
            self.first = self._encoded(block)
            self._done = block is None

    def next_chunk(self) -> bytes | None:
        """The next bytes of the result, None once it has all gone. SqlError when the engine
        fails (or the query is killed) part way."""
        with self._lock:
            if self._done or self._closed:
                return None
            block = self._engine.next()
            self._done = block is None
            chunk = self._encoded(block)
            return None if block is None and not chunk else chunk

    def _encoded(self, block: bytes | None) -> bytes:
        if self._names is not None and block is not None:
            return self._names.cut(block)
        if self._arrow is None:
            return block or b""
        return self._arrow.finish() if block is None else self._arrow.feed(block)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._done:
                    self._engine.cancel()
            finally:
                self._finish()
