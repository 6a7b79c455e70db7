"""The processors' writes to the projection tables (docs/processors.md, step 5): retried with
backoff until the engine takes them; rows it refuses for good go to the dead letters.

A write inserts one table at a time, each retried on its own, in `_TABLE_ORDER` (runs, with its
run_list, after events and steps: a run in the run list has its steps and events written, as in
one `BatchWriter.write`), so that each insert is timed and its failures counted by table
(`steplog_clickhouse_insert_seconds{table}`, `steplog_clickhouse_insert_failures_total{table}`),
and a table that failed is inserted again without the ones already written."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    wait_exponential_jitter,
)

from steplog.errors import InvalidEventError, StoreProcessGoneError
from steplog.metrics import metrics
from steplog.projections.writer import BatchWriter, RefusedRow, TableRows, WriteResult

from .dead_letters import REFUSED_ROW, RowSource, add_dead_letter
from .dispatch import Dispatcher
from .write_health import WriteHealth

__all__ = ["ProjectionWrites"]

log = logging.getLogger("steplog.processors")

_TABLE_ORDER: Final = ("events", "flows", "steps", "runs", "dead_letters")
"""docs/processors.md, step 5 (the dead letters' mirror writes its table alone)."""


class ProjectionWrites:
    """Every projection write of one process (the fold's rows and the flows'), and how they go
    (`health`, which the health endpoint reads)."""

    def __init__(self, writer: BatchWriter, dispatcher: Dispatcher, dlq_topic: str) -> None:
        self.writer = writer
        self.dispatcher = dispatcher
        self.dlq_topic = dlq_topic
        self.health = WriteHealth()

    async def write(
        self, rows: Mapping[str, TableRows], locate: Callable[[RefusedRow], RowSource]
    ) -> None:
        """Write `rows`, retrying with backoff until it succeeds (a store process that died is
        not retried: the error stops the processors); rows the engine refuses for good go to
        the dead letters, at the message `locate` names for each."""
        refused = await self._write(rows)
        if refused:
            await self._dead_letter_rows(refused, locate)

    async def _write(self, rows: Mapping[str, TableRows]) -> list[RefusedRow]:
        tables = sorted((table for table, held in rows.items() if held.rows),
                        key=lambda table: _TABLE_ORDER.index(table) if table in _TABLE_ORDER
                        else len(_TABLE_ORDER))
        if not tables:
            return []
        refused: list[RefusedRow] = []
        for table in tables:
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.2, max=30, jitter=0.5),
                # A dead store process cannot come back: the error stops the processors.
                retry=retry_if_not_exception_type(StoreProcessGoneError),
                before_sleep=self._note_write_failure,
            ):
                with attempt:
                    result = await self._insert(table, rows[table])
            refused.extend(result.refused)
        self.health.succeeded(len(refused))
        return refused

    async def _insert(self, table: str, rows: TableRows) -> WriteResult:
        """One attempt at one table's insert, timed (failures counted) for the metrics."""
        m = metrics()
        # A thread: the insert blocks, and the loop must keep heartbeating meanwhile.
        started = self.health.began()
        began = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, self.writer.write, {table: rows}
            )
        except Exception:
            m.clickhouse_insert_failures.labels(table).inc()
            raise
        finally:
            self.health.ended(started)
            m.clickhouse_insert_seconds.labels(table).observe(time.perf_counter() - began)
        return result

    def _note_write_failure(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome else None
        self.health.failed(error or "unknown error")
        log.warning(
            "projection write failed (attempt %d), retrying: %s", state.attempt_number, error
        )

    async def _dead_letter_rows(
        self, refused: Sequence[RefusedRow], locate: Callable[[RefusedRow], RowSource]
    ) -> None:
        """Dead letters for rows the engine refused: the reason is the engine's message, the
        value the row as JSON (the row is what was refused, and what an operator must fix)."""
        outbox = self.dispatcher.outbox()
        for row in refused:
            value = json.dumps(row.values, default=str, sort_keys=True).encode()
            problem = f"ClickHouse refused its row in the {row.table} table: {row.reason}"
            add_dead_letter(
                self.dlq_topic, outbox, InvalidEventError(row.column, problem), locate(row), value,
                category=REFUSED_ROW,
            )
        await outbox.flush()
