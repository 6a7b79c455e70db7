"""Batched inserts into the projection tables.

One `write` is one insert per table that has rows, in `PROJECTION_TABLES` order (events first,
run_list last), so a reader that finds a run in the run list also finds the steps and events it
was folded from. `run_list` is not in the batch: its rows are the batch's `runs` rows, cut to
`RUN_LIST_COLUMNS` (those the engine refused for `runs` are left out of it too).

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
from operator import itemgetter
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError

from .migrations import PROJECTION_TABLES, RUN_LIST_COLUMNS, verify_tables
from .refusals import names_missing_table, refused_column, refuses_rows

log = logging.getLogger("steplog.projections")

WRITTEN_TABLES = (*PROJECTION_TABLES, "dead_letters", "flow_starts")
"""What a write inserts into, in order: the projection tables, then the processors' mirror of
the DLQ topic (processors/dead_letters_host.py) and flow control's held-back starts
(processors/flow_control_host.py), which replay does not rebuild."""


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
    """Rows inserted (a run's row counts twice: in runs and in run_list)."""
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
        unknown = set(batch) - (set(WRITTEN_TABLES) - {"run_list"})
        if unknown:
            raise ValueError(
                f"not projection tables a batch holds: {sorted(unknown)} (run_list's rows are "
                "derived from the runs rows)"
            )
        result = WriteResult()
        refused_runs: set[tuple[Any, ...]] = set()
        for table in WRITTEN_TABLES:
            rows = batch.get(table if table != "run_list" else "runs")
            if rows is None or not rows.rows:
                continue
            if table == "run_list":
                self._insert(table, RUN_LIST_COLUMNS, _run_list_rows(rows, refused_runs), result)
                continue
            before = len(result.refused)
            self._insert(table, rows.columns, rows.rows, result)
            if table == "runs":
                refused_runs = {_run_version(row.values) for row in result.refused[before:]}
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


_RUN_VERSION = ("project", "flow", "run_id", "version")
"""What tells a refused runs row from the other rows of its batch."""


def _run_version(values: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(values[column] for column in _RUN_VERSION)


def _run_list_rows(runs: TableRows, refused: set[tuple[Any, ...]]) -> list[Sequence[Any]]:
    """The run_list rows of `runs`' rows: each cut to RUN_LIST_COLUMNS, the refused ones left
    out (a run list must not show a run whose row in `runs` is not there)."""
    pick = itemgetter(*(runs.columns.index(column) for column in RUN_LIST_COLUMNS))
    if not refused:
        return [pick(row) for row in runs.rows]
    version = itemgetter(*(runs.columns.index(column) for column in _RUN_VERSION))
    return [pick(row) for row in runs.rows if version(row) not in refused]
