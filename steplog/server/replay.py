"""`steplog replay`: rebuild every projection from offset 0 of the log, then swap it in.

The rebuild folds the flows topic and then the events topic, as they stand when the replay
starts, with the same fold and the same batch builder as the processors (keeping the fold's row
effects and ignoring the engine's: nothing is sent during a replay), into fresh tables named
`<table>__replay` beside the live ones. The folding runs in child processes, each over a share
of the events topic's partitions, while this process inserts the rows they send
(steplog/server/replay_fold.py). Then each live table is exchanged with its rebuilt twin
(`EXCHANGE TABLES`, atomic per table; the four run back to back) and the old data dropped.
`--dry-run` rebuilds the same way, prints a row-by-row comparison with the live tables, and
drops the rebuilt ones.

Run it with the processors stopped: events they fold during the replay would be in the live
tables but not in the rebuilt ones. (With the embedded engine the chDB lock enforces this: the
processors' process owns the files.)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from clickhouse_connect.driver.client import Client

from steplog.errors import ReplayError
from steplog.projections.clickhouse import open_clickhouse, query_value
from steplog.processors.run_retention import state_retention
from steplog.projections.log_reader import topic_end_offsets
from steplog.projections.migrations import PROJECTION_TABLES, migrate, table_ddl
from steplog.projections.queries import rows_only_in_sql, table_columns_query
from steplog.projections.writer import ProjectionWriter
from steplog.record_signer import signatures_enforced
from steplog.server.key_ring import read_key_ring
from steplog.server.replay_fold import FoldCounts, FoldShare, fold_share, shares
from steplog.settings import Settings
from steplog.topics import topic_partitions

SUFFIX = "__replay"
SAMPLE_ROWS = 5

Progress = Callable[[int], None]
"""Called with the number of log records read since the last call."""


@dataclass
class TableDiff:
    table: str
    live_rows: int
    rebuilt_rows: int
    only_live: int
    only_rebuilt: int
    samples: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.only_live == 0 and self.only_rebuilt == 0


@dataclass
class ReplayReport(FoldCounts):
    """Every fold process's counts, added up, and what became of the rebuilt tables."""

    refused: int = 0
    """Rows the engine refused (the processors dead-letter the same rows; they are not in
    the live tables either)."""
    seconds: float = 0.0
    swapped: bool = False
    diffs: list[TableDiff] = field(default_factory=list)


def default_processes() -> int:
    """One fold process per core: the inserts (in this process, or the ClickHouse server's)
    take what the folds leave."""
    return os.cpu_count() or 1


async def log_size(settings: Settings) -> int:
    """How many records a replay will read (for the progress bar's total)."""
    total = 0
    for topic in (settings.topics.flows, settings.topics.events):
        total += sum(await topic_end_offsets(settings.kafka_bootstrap, topic))
    return total


def replay_log(
    settings: Settings,
    *,
    dry_run: bool,
    progress: Progress | None = None,
    client: Client | None = None,
    processes: int | None = None,
) -> ReplayReport:
    """Rebuild the projections from the log; swap them in unless `dry_run`. `processes` fold
    processes share the events topic's partitions (default: `default_processes()`)."""
    client = client or open_clickhouse(settings.clickhouse_dsn)
    database = settings.clickhouse_database
    migrate(client, database)
    for table in PROJECTION_TABLES:
        client.command(f"DROP TABLE IF EXISTS {database}.{table}{SUFFIX}")
        client.command(table_ddl(table, f"{database}.{table}{SUFFIX}"))
    writer = ProjectionWriter(client, database, suffix=SUFFIX)
    began = time.perf_counter()
    report = _rebuild(
        settings, writer, progress or (lambda _: None), processes or default_processes()
    )
    report.seconds = time.perf_counter() - began
    if dry_run:
        report.diffs = [compare_table(client, database, table) for table in PROJECTION_TABLES]
        for table in PROJECTION_TABLES:
            client.command(f"DROP TABLE IF EXISTS {database}.{table}{SUFFIX}")
    else:
        for table in PROJECTION_TABLES:
            client.command(f"EXCHANGE TABLES {database}.{table} AND {database}.{table}{SUFFIX}")
        for table in PROJECTION_TABLES:
            client.command(f"DROP TABLE IF EXISTS {database}.{table}{SUFFIX}")
        report.swapped = True
    return report


def _rebuild(
    settings: Settings, writer: ProjectionWriter, progress: Progress, processes: int
) -> ReplayReport:
    """Fold in child processes (steplog/server/replay_fold.py), insert here as their rows come."""
    partitions = asyncio.run(topic_partitions(settings.kafka_bootstrap, settings.topics.events))
    # Where the processors check signed records, replay checks them as they did, against the
    # whole keys topic read now (revocations carry their time: judged on the log's time).
    keys = (tuple(asyncio.run(read_key_ring(settings)).list())
            if signatures_enforced(settings) else None)
    context = multiprocessing.get_context("spawn")
    children: dict[Connection, Any] = {}  # each child's end of the pipe -> its SpawnProcess
    report = ReplayReport()
    try:
        for number, share in enumerate(shares(partitions, processes)):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=fold_share,
                args=(sender, FoldShare(
                    bootstrap=settings.kafka_bootstrap,
                    events_topic=settings.topics.events,
                    flows_topic=settings.topics.flows,
                    max_event_bytes=settings.max_event_bytes,
                    partitions=share,
                    state_memory_bytes=settings.state_memory_mb << 20,
                    sends_flows=number == 0,
                    keys=keys,
                    state_retention=state_retention(settings),
                ), os.getpid()),
                name=f"steplog-replay-fold-{number}", daemon=True,
            )
            child.start()
            sender.close()  # so that a child's death reads as EOF here
            children[receiver] = child
        while children:
            for ready in wait(list(children)):
                assert isinstance(ready, Connection)
                _take(ready, children, writer, progress, report)
    finally:
        for receiver, child in children.items():  # only after a failure
            child.kill()
            child.join()
            receiver.close()
    return report


def _take(
    receiver: Connection,
    children: dict[Connection, Any],
    writer: ProjectionWriter,
    progress: Progress,
    report: ReplayReport,
) -> None:
    """Handle a child's next message: insert its rows, or count it done."""
    child = children[receiver]
    try:
        kind, *payload = receiver.recv()
    except EOFError:
        child.join(1)
        raise ReplayError(
            f"replay: fold process {child.name} (pid {child.pid}) exited with code "
            f"{child.exitcode} before it was done; nothing was swapped in"
        ) from None
    if kind == "rows":
        rows, records = payload
        report.refused += len(writer.write(rows).refused)
        progress(records)
    elif kind == "done":
        report.add(payload[0])
        del children[receiver]
        receiver.close()
        child.join()
    else:
        raise ReplayError(f"replay: fold process {child.name} failed: {payload[0]}")


def compare_table(client: Client, database: str, table: str) -> TableDiff:
    """Row-by-row comparison of a live table with its rebuilt twin, both as of FINAL."""
    live, rebuilt = f"{database}.{table}", f"{database}.{table}{SUFFIX}"
    columns_sql, parameters = table_columns_query(database, table)
    columns = ", ".join(
        name for (name,) in client.query(columns_sql, parameters=parameters).result_rows
    )

    def count(sql: str) -> int:
        return int(str(query_value(client, sql)))

    def only(a: str, b: str) -> str:
        return rows_only_in_sql(a, b, columns)

    diff = TableDiff(
        table=table,
        live_rows=count(f"SELECT count() FROM {live} FINAL"),
        rebuilt_rows=count(f"SELECT count() FROM {rebuilt} FINAL"),
        only_live=count(f"SELECT count() FROM ({only(live, rebuilt)})"),
        only_rebuilt=count(f"SELECT count() FROM ({only(rebuilt, live)})"),
    )
    for label, sql in (("live only", only(live, rebuilt)), ("rebuilt only", only(rebuilt, live))):
        for row in client.query(f"{sql} LIMIT {SAMPLE_ROWS}").result_rows:
            diff.samples.append(f"{label}: {row}")
    return diff
