"""`steplog sql`: run a query where the data is, and print it as a table, CSV or JSON.

With a ClickHouse server DSN the query goes to the server. With the embedded engine it goes to
the stack's SQL endpoint when a stack owns the chDB files or is starting on them (it waits for
the endpoint, bounded, saying so), and straight to the files when nothing does (so `steplog
sql` works with the stack stopped too); steplog/server/stack_lock.py tells which.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from steplog.credentials import client_key
from steplog.errors import ClickHouseError, ClickHousePathLockedError
from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.settings import Settings
from steplog.server.stack_lock import claim_for_command


_POLL_S: Final = 0.5


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def analyst_client(settings: Settings) -> Client:
    """A client on the settings' database, wherever it can be reached from here."""
    return engine_client(settings, settings.clickhouse_database)


def engine_client(
    settings: Settings, database: str | None, *, say: Callable[[str], None] = _to_stderr
) -> Client:
    """A client on the settings' ClickHouse: the server; or, for the embedded engine, the
    stack's SQL endpoint when a stack holds the files or is starting on them (waiting for the
    endpoint up to STEPLOG_STACK_WAIT_S, saying so), the files themselves when nothing does
    (steplog/server/stack_lock.py). `say`: where the waiting is told."""
    path = chdb_path(settings.clickhouse_dsn)
    if path is None:
        return open_clickhouse(settings.clickhouse_dsn, database)
    wait = settings.stack_wait_s
    deadline = time.monotonic() + wait
    told: set[str] = set()

    def tell(line: str) -> None:
        if line not in told:
            told.add(line)
            say(line)

    while (holder := claim_for_command(path)) is not None:
        if holder.is_stack:
            client = _stack_endpoint(holder.sql_port, database, client_key(settings))
            if client is not None:
                return client
            tell(f"waiting up to {wait:g}s (STEPLOG_STACK_WAIT_S) for the stack starting on "
                 f"{path} ({holder.describe()}) to serve SQL on 127.0.0.1:{holder.sql_port}")
        else:
            tell(f"waiting up to {wait:g}s (STEPLOG_STACK_WAIT_S) for {holder.describe()} to "
                 f"finish with the embedded ClickHouse data at {path}")
        if time.monotonic() > deadline:
            raise ClickHousePathLockedError(
                f"the embedded ClickHouse data at {path} is held by {holder.describe()}"
                + (f", whose SQL endpoint on 127.0.0.1:{holder.sql_port} did not answer"
                   if holder.is_stack else ", which did not finish")
                + f" within {wait:g}s (STEPLOG_STACK_WAIT_S)"
            )
        time.sleep(_POLL_S)
    try:
        return open_clickhouse(settings.clickhouse_dsn, database)
    except ClickHousePathLockedError:
        # Held by a process that takes no stack lock (the processors of an earlier version):
        # its endpoint, if it serves one where the settings say.
        client = _stack_endpoint(settings.sql_port, database, client_key(settings))
        if client is None:
            raise ClickHouseError(
                f"the embedded ClickHouse files are owned by another process, and its SQL "
                f"endpoint on 127.0.0.1:{settings.sql_port} (STEPLOG_SQL_PORT) does not "
                "answer"
            ) from None
        return client


def _stack_endpoint(port: int, database: str | None, key: str | None) -> Client | None:
    """A client on the SQL endpoint at 127.0.0.1:port logged in with `key` (as ClickHouse
    clients send a password), or None while it does not answer."""
    try:
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=port, database=database, compress=False, password=key or "",
            connect_timeout=2,
        )
    except DatabaseError as exc:
        if "AUTHENTICATION_FAILED" in str(exc) or "REQUIRED_PASSWORD" in str(exc):
            raise ClickHouseError(
                f"the SQL endpoint on 127.0.0.1:{port} refused "
                + ("the key sent" if key else "a request without a key")
                + " (STEPLOG_API_KEY, else <data dir>/admin.key): " + str(exc).splitlines()[0]
            ) from None
        return None
    except Exception:
        return None


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: OutputFormat) -> str:
    if fmt is OutputFormat.JSON:
        return json.dumps([dict(zip(columns, row)) for row in rows], default=_json_value, indent=2)
    if fmt is OutputFormat.CSV:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_text(value) for value in row] for row in rows])
        return out.getvalue().rstrip("\n")
    # Text, not str: rich would read "[...]" in names and values as markup (and fail on some).
    table = Table(show_lines=False)
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(_text(value)) for value in row))
    shown = io.StringIO()
    console = Console(file=shown, width=200, force_terminal=False)
    console.print(table)
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return shown.getvalue().rstrip("\n")


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # IPv4Address, timedelta, ...: their text, as in the table and CSV
