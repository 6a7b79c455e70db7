"""The embedded engine as the SQL endpoint uses it: a session of its own for every request.

chDB runs one engine per process and hands out any number of connections to it; each has its
own session (settings, current database) and runs its queries side by side with the others'
(measured: five `sleep(1)` on five connections took 1.01 s). So every request opens one
(about 1.3 ms), sets its settings there and closes it: nothing a request sets outlives it or
reaches another (the old shared client kept a `SET max_memory_usage=1` for every later request),
and a slow query holds only its own connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import chdb

from steplog.server.sql_errors import SqlError, engine_error

__all__ = ["Engine", "EngineResult", "EngineSession", "EngineStream", "QueryStats", "quoted"]

_connect = cast(Any, chdb).connect  # chDB's connect() is not annotated


@dataclass(frozen=True)
class QueryStats:
    """What the engine reports of a query (chDB's result): the X-ClickHouse-Summary."""

    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed_s: float = 0.0
    total_rows_to_read: int = 0
    """The engine's estimate of the rows it will read (progress); once read, the rows read."""

    @classmethod
    def of(cls, result: Any) -> QueryStats:
        """Of a chDB query result (or one streamed block's): chDB's `rows_read` counts the
        result's rows, `storage_rows_read` what was read to make them."""
        return cls(result.storage_rows_read(), result.storage_bytes_read(),
                   result.rows_written(), result.bytes_written(), result.rows_read(),
                   result.bytes_read(), result.elapsed(), result.storage_rows_read())

    @classmethod
    def of_progress(cls, payload: Mapping[str, int]) -> QueryStats:
        """Of chDB's progress report: the query's running totals, named as ClickHouse's
        Progress names them (measured on chDB 4.4; result_rows stays 0 while it runs)."""
        return cls(payload.get("read_rows", 0), payload.get("read_bytes", 0),
                   payload.get("written_rows", 0), payload.get("written_bytes", 0),
                   payload.get("result_rows", 0), payload.get("result_bytes", 0),
                   payload.get("elapsed_ns", 0) / 1e9, payload.get("total_rows_to_read", 0))


@dataclass(frozen=True)
class EngineResult:
    data: bytes
    stats: QueryStats


class EngineSession:
    """One connection to the engine: one request's session (or a kept one: sql_sessions)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def use(self, database: str) -> None:
        self.query(f"USE `{database.replace('`', '``')}`", {}, "TabSeparated")

    def set(self, settings: Mapping[str, str]) -> None:
        """`SET` each setting for this session (names checked by the caller, values quoted)."""
        for name, value in settings.items():
            self.query(f"SET {name} = {quoted(value)}", {}, "TabSeparated")

    def query(self, sql: str, params: Mapping[str, str], fmt: str) -> bytes:
        """The whole result of `sql` in format `fmt` (a FORMAT clause in `sql` wins);
        `params` bind its `{name:Type}` placeholders. SqlError with the engine's exception."""
        return self.run(sql, params, fmt).data

    def run(self, sql: str, params: Mapping[str, str], fmt: str) -> EngineResult:
        """`query`, with what the engine reports of it."""
        try:
            result = self._connection.query(sql, fmt, params=dict(params))
        except Exception as exc:  # chDB raises its message in RuntimeError/ChdbError
            raise engine_error(exc) from None
        return EngineResult(result.bytes() or b"", QueryStats.of(result))

    def stream(self, sql: str, params: Mapping[str, str], fmt: str) -> EngineStream:
        """`sql`'s result block by block, as the engine produces it: the engine computes the
        next block only when asked (measured: no growth while the reader waits), so a slow
        reader holds the query back instead of filling memory."""
        try:
            return EngineStream(self._connection.send_query(sql, fmt, params=dict(params)))
        except Exception as exc:
            raise engine_error(exc) from None

    def watch(self, progress: Callable[[QueryStats], None] | None) -> None:
        """Have `progress` called with the running totals of this session's queries while
        they run, None to stop. chDB calls it every `interactive_delay` (100 ms) while the
        engine reads, on the thread that runs the query or fetches its next block (measured
        on chDB 4.4; nothing while a query reads nothing, e.g. `sleep`). It must not raise."""
        if progress is None:
            self._connection.set_progress_callback(None)
            return

        def report(payload: Mapping[str, int]) -> None:
            progress(QueryStats.of_progress(payload))

        self._connection.set_progress_callback(report)

    def ask(self, sql: str, params: Mapping[str, str], fmt: str) -> str:
        """`query` decoded: what the guard reads."""
        return self.query(sql, params, fmt).decode("utf-8", errors="replace")

    def insert(self, statement: str, fmt: str, data: Iterable[bytes]) -> None:
        """`statement` (an INSERT without FORMAT or data) fed `data`, chunk by chunk, in
        format `fmt`, as bytes: the data is never parsed as SQL. The engine parses what it
        has been fed as it goes (a row may span chunks), so a body spooled on disk is never
        whole in memory (sql_body.Spool.chunks)."""
        try:
            inserter = self._connection.send_insert(statement, fmt)
            try:
                for chunk in data:
                    if chunk:
                        inserter.append(chunk)
                inserter.finish()
            except BaseException:
                inserter.cancel()
                raise
        except SqlError:
            raise
        except Exception as exc:
            raise engine_error(exc) from None

    def close(self) -> None:
        self._connection.close()


class EngineStream:
    """A result being produced (chDB's StreamingResult); one thread at a time."""

    def __init__(self, result: Any) -> None:
        self._result = result
        self.stats = QueryStats()
        """What the engine reported with the last block."""

    def next(self) -> bytes | None:
        """The next block in the query's format, None at the end; SqlError when the query
        fails (the engine's exception, QUERY_WAS_CANCELLED when killed)."""
        try:
            block = self._result.fetch()
        except Exception as exc:
            raise engine_error(exc) from None
        if block is None:
            return None
        self.stats = QueryStats.of(block)
        return bytes(block.bytes() or b"")

    def cancel(self) -> None:
        """Stop producing (waits for a `next` running on another thread: kill the query in
        the engine first, `Engine.kill`)."""
        self._result.cancel()


class Engine:
    """Sessions on the engine whose files are at `path` (the process's one engine: the path
    must be the one it was opened with, which chDB compares literally, hence realpath)."""

    def __init__(self, path: Path) -> None:
        self.path = os.path.realpath(path)

    def open_session(self) -> EngineSession:
        """A new session; the caller closes it."""
        try:
            return EngineSession(_connect(self.path))
        except Exception as exc:
            raise SqlError(
                76, "CANNOT_OPEN_FILE", f"cannot open a session on the engine at {self.path}: {exc}"
            ) from None

    @contextmanager
    def session(self) -> Iterator[EngineSession]:
        session = self.open_session()
        try:
            yield session
        finally:
            session.close()

    def kill(self, tags: Collection[str], *, wait: bool = True) -> None:
        """Stop the queries running with `log_comment` set to one of `tags`, wherever they
        are (before their first block or between blocks): the engine's own KILL QUERY, on a
        session of its own; `wait`: until they have stopped (SYNC).

        Not waiting (ASYNC) is for a stream its caller closes next: a stream paused between
        blocks stops only when its next block is asked for, which is what closing it does, so
        a SYNC kill before the close would wait for ever (seen: the interpreter could not
        exit, its executor threads stuck in the kill)."""
        if not tags:
            return
        listed = ", ".join(quoted(tag) for tag in tags)
        mode = "SYNC" if wait else "ASYNC"
        with self.session() as session:
            session.query(f"KILL QUERY WHERE Settings['log_comment'] IN ({listed}) {mode}", {},
                          "TabSeparated")


def quoted(value: str) -> str:
    """A setting's value as a string literal: the engine converts it to the setting's type."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
