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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import chdb

from steplog.server.sql_errors import SqlError, engine_error

__all__ = ["Engine", "EngineSession"]

_connect = cast(Any, chdb).connect  # chDB's connect() is not annotated


class EngineSession:
    """One connection to the engine: one request's session."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def use(self, database: str) -> None:
        self.query(f"USE `{database.replace('`', '``')}`", {}, "TabSeparated")

    def set(self, settings: Mapping[str, str]) -> None:
        """`SET` each setting for this session (names checked by the caller, values quoted)."""
        for name, value in settings.items():
            self.query(f"SET {name} = {_quoted(value)}", {}, "TabSeparated")

    def query(self, sql: str, params: Mapping[str, str], fmt: str) -> bytes:
        """The whole result of `sql` in format `fmt` (a FORMAT clause in `sql` wins);
        `params` bind its `{name:Type}` placeholders. SqlError with the engine's exception."""
        try:
            result = self._connection.query(sql, fmt, params=dict(params))
        except Exception as exc:  # chDB raises its message in RuntimeError/ChdbError
            raise engine_error(exc) from None
        data: bytes = result.bytes() or b""
        return data

    def ask(self, sql: str, params: Mapping[str, str], fmt: str) -> str:
        """`query` decoded: what the guard reads."""
        return self.query(sql, params, fmt).decode("utf-8", errors="replace")

    def insert(self, statement: str, fmt: str, data: bytes) -> None:
        """`statement` (an INSERT without FORMAT or data) fed `data` in format `fmt`, as
        bytes: the data is never parsed as SQL."""
        try:
            inserter = self._connection.send_insert(statement, fmt)
            try:
                if data:
                    inserter.append(data)
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


class Engine:
    """Sessions on the engine whose files are at `path` (the process's one engine: the path
    must be the one it was opened with, which chDB compares literally, hence realpath)."""

    def __init__(self, path: Path) -> None:
        self.path = os.path.realpath(path)

    @contextmanager
    def session(self) -> Iterator[EngineSession]:
        try:
            connection = _connect(self.path)
        except Exception as exc:
            raise SqlError(
                76, "CANNOT_OPEN_FILE", f"cannot open a session on the engine at {self.path}: {exc}"
            ) from None
        session = EngineSession(connection)
        try:
            yield session
        finally:
            session.close()


def _quoted(value: str) -> str:
    """A setting's value as a string literal: the engine converts it to the setting's type."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
