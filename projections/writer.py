"""Batched inserts into the projection tables.

One `write` is one insert per table that has rows, in a fixed order (events first, runs last),
so a reader that sees a run's newest row also finds the steps and events it was folded from.
The writer never retries: the caller decides (the processors retry with backoff and do not
acknowledge the events until a write succeeds; replay stops with the error).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError

from .migrations import PROJECTION_TABLES


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


class BatchWriter(Protocol):
    """What the processors write their batches with: a `ProjectionWriter` (a ClickHouse
    server, over the network) or the embedded engine's `StoreProcess` (another process)."""

    def write(self, batch: Mapping[str, TableRows]) -> int:
        """Insert every table's rows, one insert per table in `PROJECTION_TABLES` order; return
        how many rows were written. Raises (ClickHouseError), never retries."""
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

    def write(self, batch: Mapping[str, TableRows]) -> int:
        """Insert every table's rows; return how many rows were written."""
        unknown = set(batch) - set(PROJECTION_TABLES)
        if unknown:
            raise ValueError(f"not projection tables: {sorted(unknown)}")
        written = 0
        for table in PROJECTION_TABLES:
            rows = batch.get(table)
            if rows is None or not rows.rows:
                continue
            try:
                self.client.insert(self.table_name(table), rows.rows, column_names=rows.columns)
            except Exception as exc:
                raise ClickHouseError(
                    f"insert of {len(rows.rows)} rows into {self.table_name(table)} failed: {exc}"
                ) from exc
            written += len(rows.rows)
        return written
