"""Batched inserts into the projection tables.

One `write` is one insert per table that has rows, in a fixed order (events first, runs last),
so a reader that sees a run's newest row also finds the steps and events it was folded from.

Two kinds of failure, told apart by `refuses_rows` (projections/refusals.py):
- transient (the engine away, a timeout, a table missing: it is recreated empty first, so the
  retry lands): `write` raises ClickHouseError and never retries; the caller decides (the processors retry with backoff and do not acknowledge
  the events until a write succeeds; replay stops with the error);
- the rows themselves (a value the column cannot hold, a constraint): retrying would fail for
  ever and halt ingestion behind one bad event, so `write` splits the table's rows in halves
  until each refused row stands alone, inserts the rest and returns the refused rows with the
  engine's message (`WriteResult.refused`). The caller dead-letters them (the processors) or
  counts them (replay): both by the same rule, so a rebuild leaves out the same rows as live.
  Inserting a half again after its sibling failed is safe: a failed insert wrote nothing, and
  the tables keep one row per key and version anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError

from .migrations import PROJECTION_TABLES, verify_tables
from .refusals import names_missing_table, refused_column, refuses_rows

log = logging.getLogger("steplog.projections")


@dataclass
class TableRows:
    """Rows for one table, as value tuples in `columns` order."""

    columns: tuple[str, ...]
    rows: list[Sequence[Any]] = field(default_factory=list)


def concat_rows(batches: Iterable[Mapping[str, TableRows]]) -> dict[str, TableRows]:
    """Several batches' rows as one batch, each table's rows in the order of the batches. One
    write of it leaves the tables as the writes one after the other would: every table keeps
    a key's row of the highest version (ReplacingMergeTree), whichever batch it came from."""
    merged: dict[str, TableRows] = {}
    for batch in batches:
        for table, rows in batch.items():
            held = merged.setdefault(table, TableRows(rows.columns))
            if held.columns != rows.columns:
                raise ValueError(f"{table}: columns {rows.columns} after {held.columns}")
            held.rows.extend(rows.rows)
    return merged


@dataclass(frozen=True)
class RefusedRow:
    """A row the engine refused for good: the rows themselves were wrong, not the engine."""

    table: str
    """The projection table (without the writer's suffix)."""
    values: dict[str, Any]
    """The row, by column."""
    reason: str
    """The engine's (or the client's) message."""
    column: str
    """The column named by the message; '' when it names none."""


@dataclass
class WriteResult:
    written: int = 0
    """Rows inserted."""
    refused: list[RefusedRow] = field(default_factory=list)


class BatchWriter(Protocol):
    """What the processors write their batches with: a `ProjectionWriter` (a ClickHouse
    server, over the network) or the embedded engine's `StoreProcess` (another process)."""

    def write(self, batch: Mapping[str, TableRows]) -> WriteResult:
        """Insert every table's rows, in `PROJECTION_TABLES` order, leaving out (and returning)
        the rows the engine refuses for good. Raises ClickHouseError for any other failure,
        never retries."""
        ...


class ProjectionWriter:
    """Inserts `TableRows` into the projection tables of one database.

    `suffix` writes to `<table><suffix>` instead (replay builds fresh tables beside the live
    ones, then swaps them in).
    """

    def __init__(self, client: Client, database: str, *, suffix: str = "") -> None:
        self.client = client
        self.database = database
        self.suffix = suffix

    def table_name(self, table: str) -> str:
        return f"{self.database}.{table}{self.suffix}"

    def write(self, batch: Mapping[str, TableRows]) -> WriteResult:
        """Insert every table's rows (module docstring: refused rows are left out and
        returned, any other failure raises)."""
        unknown = set(batch) - set(PROJECTION_TABLES)
        if unknown:
            raise ValueError(f"not projection tables: {sorted(unknown)}")
        result = WriteResult()
        for table in PROJECTION_TABLES:
            rows = batch.get(table)
            if rows is not None and rows.rows:
                self._insert(table, rows.columns, rows.rows, result)
        return result

    def _insert(
        self, table: str, columns: tuple[str, ...], rows: list[Sequence[Any]], result: WriteResult
    ) -> None:
        """Insert `rows`; on a refusal, each half on its own, down to the refused rows."""
        try:
            self.client.insert(self.table_name(table), rows, column_names=columns)
        except Exception as exc:
            if names_missing_table(exc) and not self.suffix:
                # Dropped by hand while the processors ran: made again empty (and the views),
                # so that the retry of this write lands; replay rebuilds what the table held.
                for repair in verify_tables(self.client, self.database):
                    log.warning("%s", repair)
            if not refuses_rows(exc):
                raise ClickHouseError(
                    f"insert of {len(rows)} rows into {self.table_name(table)} failed: {exc}"
                ) from exc
            if len(rows) == 1:
                result.refused.append(RefusedRow(
                    table, dict(zip(columns, rows[0])), str(exc), refused_column(exc)
                ))
                return
            half = len(rows) // 2
            self._insert(table, columns, rows[:half], result)
            self._insert(table, columns, rows[half:], result)
            return
        result.written += len(rows)
