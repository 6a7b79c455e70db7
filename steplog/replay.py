"""`steplog replay`: rebuild every projection from offset 0 of the log, then swap it in.

The rebuild folds the flows topic and then the events topic, as they stand when the replay
starts, with the same fold and the same batch builder as the processors (keeping the fold's row
effects and ignoring the engine's: nothing is sent during a replay), into fresh tables named
`<table>__replay` beside the live ones. Then each live table is exchanged with its rebuilt twin
(`EXCHANGE TABLES`, atomic per table; the four run back to back) and the old data dropped.
`--dry-run` rebuilds the same way, prints a row-by-row comparison with the live tables, and
drops the rebuilt ones.

Run it with the processors stopped: events they fold during the replay would be in the live
tables but not in the rebuilt ones. (With the embedded engine the chDB lock enforces this: the
processors' process owns the files.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from steplog.errors import InvalidEventError
from steplog.processors.fold import apply_event, take_rows
from steplog.processors.host import run_state_key
from steplog.processors.projection_batch import ProjectionBatch
from steplog.processors.state import RunState
from steplog.projections.clickhouse import open_clickhouse, query_value
from steplog.projections.log_reader import read_log, topic_end_offsets
from steplog.projections.migrations import PROJECTION_TABLES, migrate, table_ddl
from steplog.projections.writer import ProjectionWriter
from steplog.schemas.codec import decode_event, decode_flows_message
from steplog.schemas.flows import FlowDefinition, WorkflowDefinition
from steplog.settings import Settings

SUFFIX = "__replay"
BATCH_EVENTS = 20_000
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
class ReplayReport:
    events: int = 0
    invalid: int = 0
    runs: int = 0
    flows: int = 0
    seconds: float = 0.0
    swapped: bool = False
    diffs: list[TableDiff] = field(default_factory=list)


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
) -> ReplayReport:
    """Rebuild the projections from the log; swap them in unless `dry_run`."""
    client = client or open_clickhouse(settings.clickhouse_dsn)
    database = settings.clickhouse_database
    migrate(client, database)
    for table in PROJECTION_TABLES:
        client.command(f"DROP TABLE IF EXISTS {database}.{table}{SUFFIX}")
        client.command(table_ddl(table, f"{database}.{table}{SUFFIX}"))
    writer = ProjectionWriter(client, database, suffix=SUFFIX)
    began = time.perf_counter()
    report = asyncio.run(_rebuild(settings, writer, progress or (lambda _: None)))
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


async def _rebuild(settings: Settings, writer: ProjectionWriter, progress: Progress) -> ReplayReport:
    report = ReplayReport()
    flows: dict[str, FlowDefinition] = {}
    batch = ProjectionBatch()
    async for record in read_log(settings.kafka_bootstrap, settings.topics.flows):
        progress(1)
        try:
            definition = decode_flows_message(record.value, max_bytes=settings.max_event_bytes)
        except InvalidEventError:
            report.invalid += 1
            continue
        if isinstance(definition, WorkflowDefinition):
            continue  # the registry's, not a projection's (the processors skip them too)
        held = flows.get(definition.key)
        if held is None or held.ts <= definition.ts:
            flows[definition.key] = definition
        batch.add_flow(definition)
    report.flows = len(flows)

    states: dict[bytes, RunState] = {}
    touched: set[bytes] = set()
    pending = 0

    def take_touched_rows() -> None:
        # Rows once per run per batch (the fold's deferred rows), not after every event.
        for key in touched:
            state = states[key]
            batch.add_effects(take_rows(state, flows.get(f"{state.project}/{state.flow}")))
        touched.clear()

    async for record in read_log(settings.kafka_bootstrap, settings.topics.events):
        pending += 1
        try:
            event = decode_event(record.value, max_bytes=settings.max_event_bytes)
            if record.key != event.run_id.encode():
                raise InvalidEventError("run_id", "message key is not the event's run_id")
        except InvalidEventError:
            report.invalid += 1
            continue
        key = run_state_key(event)
        # Rows only: the engine effects (commands, timers, events for other runs) were carried
        # out when the events were first folded; a rebuild must never start, resume or cancel.
        states[key], _ = apply_event(
            states.get(key), event, flows.get(f"{event.project}/{event.flow}"), defer_rows=True
        )
        touched.add(key)
        batch.add_event(event, record.partition, record.offset)
        report.events += 1
        if pending >= BATCH_EVENTS:
            take_touched_rows()
            await asyncio.to_thread(writer.write, batch.table_rows())
            progress(pending)
            batch, pending = ProjectionBatch(), 0
    take_touched_rows()
    await asyncio.to_thread(writer.write, batch.table_rows())
    progress(pending)
    report.runs = len(states)
    return report


def compare_table(client: Client, database: str, table: str) -> TableDiff:
    """Row-by-row comparison of a live table with its rebuilt twin, both as of FINAL."""
    live, rebuilt = f"{database}.{table}", f"{database}.{table}{SUFFIX}"
    columns = ", ".join(
        name for (name,) in client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
            "ORDER BY position",
            parameters={"db": database, "t": table},
        ).result_rows
    )

    def count(sql: str) -> int:
        return int(str(query_value(client, sql)))

    def only(a: str, b: str) -> str:
        return f"SELECT {columns} FROM {a} FINAL EXCEPT SELECT {columns} FROM {b} FINAL"

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
