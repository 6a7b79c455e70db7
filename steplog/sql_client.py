"""`steplog sql`: run a query where the data is, and print it as a table, CSV or JSON.

With a ClickHouse server DSN the query goes to the server. With the embedded engine it goes to
the running stack's SQL endpoint when a stack owns the chDB files, and straight to the files
when nothing does (so `steplog sql` works with the stack stopped too).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.table import Table
from rich.text import Text

from steplog.errors import ClickHouseError, ClickHousePathLockedError
from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.settings import Settings


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def analyst_client(settings: Settings) -> Client:
    """A client on the settings' database, wherever it can be reached from here."""
    if chdb_path(settings.clickhouse_dsn) is None:
        return open_clickhouse(settings.clickhouse_dsn, settings.clickhouse_database)
    try:
        return open_clickhouse(settings.clickhouse_dsn, settings.clickhouse_database)
    except ClickHousePathLockedError:
        try:
            return clickhouse_connect.get_client(
                host="127.0.0.1",
                port=settings.sql_port,
                database=settings.clickhouse_database,
                compress=False,
            )
        except Exception as exc:
            raise ClickHouseError(
                f"the embedded ClickHouse files are owned by another process, and its SQL "
                f"endpoint on 127.0.0.1:{settings.sql_port} (STEPLOG_SQL_PORT) does not "
                f"answer: {exc}"
            ) from exc


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
