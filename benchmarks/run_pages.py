"""The dashboard's reads at scale: the run list, one run's detail and the ops summary
(projections/run_reads.py, ops_reads.py) against the same questions asked plainly of the views
(`runs_current`, `steps_current`: FINAL over the whole table), on one embedded engine.

The load: a fresh chDB database, migrated, filled by INSERT ... SELECT from numbers() (no
Python per row): `--runs` runs over 30 days in 3 projects and 12 flows (85% completed, 5%
failed, 2% cancelled, the rest running, retrying, scheduled: some stuck and overdue; children,
retriggers and signal-started runs among them), a fifth of them with an older, superseded row as
well (what the writer leaves until merges), `--steps-per-run` step rows each, flow definitions,
and the events of the newest `--event-runs` runs (a start and an end per step, a third of the
failed ones with a retry): what a detail page reads. Then each read is timed `--repeat` times
(wall time around the call, in this process: the engine is in-process) and printed with its
baseline and their ratio.

    .venv/bin/python benchmarks/run_pages.py                       # 1M runs, 10M steps
    .venv/bin/python benchmarks/run_pages.py --runs 100000 --steps-per-run 10 --repeat 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.migrations import RUN_LIST_COLUMNS, migrate
from steplog.projections.ops_reads import ops_summary
from steplog.projections.read_models import LagView, RunFilter
from steplog.projections.run_detail_reads import run_detail
from steplog.projections.run_reads import list_runs, runs_changed

DB = "bench"
DAYS = 30
PROJECTS = ("shop", "billing", "growth")
FLOW_NAMES = ("checkout", "refund", "invoice", "signup")

# One expression per column, over `n` (the run's number) and `now` (the load's start); each
# random choice is a hash of n and a salt, so a run is the same wherever it is generated.
_H = "cityHash64(n, '{salt}')"
_RUN_COLUMNS_SQL = {
    "project": "['shop','shop','shop','billing','billing','growth']"
    f"[{_H.format(salt='p')} % 6 + 1]",
    "flow": f"['checkout','refund','invoice','signup'][{_H.format(salt='f')} % 4 + 1]",
    "run_id": "lower(hex(cityHash64(n))) || lower(hex(cityHash64(n, 'id')))",
    "app": f"if({_H.format(salt='a')} % 2 = 0, 'shop-worker', '')",
    # Older runs first: n spreads over 30 days, with a few minutes of jitter.
    "created_at": "now - toIntervalMicrosecond(toUInt64(({total} - n) / {total} * {span_us}) "
    f"+ {_H.format(salt='j')} % 300000000)",
    # Runs not finished are mostly of the last 2 days; older ones are 1 in 50 of what they
    # would be (forgotten ones: the overdue and stuck an operator must see).
    "status": "multiIf(_r < 850, 'completed', _r < 900, 'failed', _r < 920, 'cancelled', "
    "n < {total} * 14 / 15 AND _r % 50 != 0, 'completed', _r < 960, 'running', "
    "_r < 975, 'retrying', _r < 990, 'scheduled', 'interrupted')",
    # Due within the next day, 1 in 10 a minute after its creation (overdue unless very new).
    "scheduled_for": "if(status = 'scheduled', if(_r % 10 = 0, created_at + toIntervalMinute(1), "
    "now + toIntervalMinute(_d % 1440)), NULL)",
    "started_at": "if(status = 'scheduled', NULL, created_at + toIntervalMillisecond(20))",
    "finished_at": "if(status IN ('completed', 'failed', 'cancelled'), created_at + "
    "toIntervalMillisecond(20 + _d), NULL)",
    "duration_ms": "if(finished_at IS NULL, NULL, toFloat64(_d))",
    "input": "'{\"order\":' || toString(n) || ',\"items\":[1,2,3]}'",
    "output": "if(status = 'completed', '{\"ok\":true}', '')",
    "error_type": "if(status = 'failed', 'PaymentDeclined', '')",
    "error_message": "if(status = 'failed', 'card declined: insufficient funds', '')",
    "error_stack": "if(status = 'failed', 'Traceback (most recent call last): ...', '')",
    "parent_run_id": f"if({_H.format(salt='c')} % 20 = 0 AND n > 1000, "
    "lower(hex(cityHash64(n - 1000))) || lower(hex(cityHash64(n - 1000, 'id'))), '')",
    "parent_step_key": "if(parent_run_id != '', 'step-3', '')",
    "trigger_event": f"if({_H.format(salt='t')} % 10 < 3, ['order.created','user.signed_up',"
    f"'invoice.due'][{_H.format(salt='e')} % 3 + 1], '')",
    "trigger_event_id": "if(trigger_event != '', lower(hex(cityHash64(n, 'ev'))), '')",
    "retrigger_of": f"if({_H.format(salt='x')} % 100 = 0 AND n > 5000, "
    "lower(hex(cityHash64(n - 5000))) || lower(hex(cityHash64(n - 5000, 'id'))), '')",
    # A running run's deadline: past for 1 in 10 (stuck), else a day ahead.
    "stuck_after": "if(status = 'running', if(_d % 10 = 0, created_at + toIntervalMinute(5), "
    "now + toIntervalDay(1)), NULL)",
    "step_count": "{steps}",
    "failed_step_count": "if(status = 'failed', 1, 0)",
    "version": "{steps} * 2 + 2",
    "updated_at": "coalesce(finished_at, started_at, created_at)",
}
"""`_r` (0-999) picks the status, `_d` (ms) the duration: see _RUNS_SOURCE."""

_RUNS_SOURCE = """
    SELECT {columns}
    FROM (
        SELECT number AS n, toDateTime64('{now}', 6, 'UTC') AS now,
               cityHash64(number, 'r') % 1000 AS _r,
               100 + cityHash64(number, 'd') % 60000 AS _d
        FROM numbers({first}, {count})
    )
"""


def _run_select(first: int, count: int, total: int, steps: int, now: datetime) -> str:
    values = {"{total}": total, "{span_us}": DAYS * 86_400_000_000, "{steps}": steps}
    expressions = dict(_RUN_COLUMNS_SQL)
    for placeholder, value in values.items():
        expressions = {
            column: expression.replace(placeholder, str(value))
            for column, expression in expressions.items()
        }
    columns = ", ".join(f"{expression} AS {column}" for column, expression in expressions.items())
    return _RUNS_SOURCE.format(
        columns=columns, now=now.strftime("%Y-%m-%d %H:%M:%S.%f"), first=first, count=count
    )


_STARTED = '{"kind":"instrumented","input":{"i":1},"metadata":{}}'
_FAILED = (
    '{"error":{"type":"Timeout","message":"upstream timed out","stack":null},'
    '"duration_ms":8.0,"retry_at":null,"non_retriable":false,"metadata":{}}'
)
_COMPLETED = '{"output":{"o":2},"duration_ms":8.0,"timed_out":false,"metadata":{}}'
"""Event payloads as the events table holds them (the payload's JSON)."""


def load(client: Client, runs: int, steps: int, event_runs: int, now: datetime) -> None:
    """Fill the database (module docstring); prints what it did and how long it took."""
    began = time.perf_counter()
    runs_columns = ", ".join(_RUN_COLUMNS_SQL)
    chunk = 250_000
    for first in range(0, runs, chunk):
        count = min(chunk, runs - first)
        client.command(
            f"INSERT INTO {DB}.runs ({runs_columns}) {_run_select(first, count, runs, steps, now)}"
        )
    # A fifth of the runs also have the row before their last (running, lower version): the
    # state until merges collapse it, which FINAL and every read must see through.
    client.command(
        f"INSERT INTO {DB}.runs ({runs_columns}) SELECT * REPLACE ('running' AS status, "
        "NULL AS finished_at, NULL AS duration_ms, '' AS output, '' AS error_type, "
        "'' AS error_message, '' AS error_stack, version - 2 AS version, "
        "coalesce(started_at, created_at) AS updated_at) "
        f"FROM (SELECT {runs_columns} FROM {DB}.runs WHERE cityHash64(run_id) % 5 = 0 "
        "AND status NOT IN ('scheduled', 'running'))"
    )
    list_columns = ", ".join(RUN_LIST_COLUMNS)
    client.command(
        f"INSERT INTO {DB}.run_list ({list_columns}) SELECT {list_columns} FROM {DB}.runs"
    )
    print(f"  runs and run_list: {time.perf_counter() - began:.1f} s", flush=True)

    began = time.perf_counter()
    step_chunk = max(1, 2_000_000 // steps)
    for first in range(0, runs, step_chunk):
        count = min(step_chunk, runs - first)
        client.command(f"""
            INSERT INTO {DB}.steps (project, flow, run_id, step_key, kind, status, attempt,
                started_at, finished_at, duration_ms, error_type, error_message, error_stack,
                input, output, metadata, deadline_at, version, updated_at)
            SELECT project, flow, run_id, 'step-' || toString(s) AS step_key, 'instrumented',
                multiIf(status = 'failed' AND s = {steps - 1}, 'failed',
                        status IN ('running', 'retrying') AND s = {steps - 1}, 'running',
                        'completed') AS step_status,
                if(status = 'failed' AND s = {steps - 1}, 3, 1),
                started_at + toIntervalMillisecond(s * 10), if(step_status = 'running', NULL,
                started_at + toIntervalMillisecond(s * 10 + 8)), if(step_status = 'running',
                NULL, 8.0), if(step_status = 'failed', error_type, ''),
                if(step_status = 'failed', error_message, ''), '', '{{"i":1}}', '{{"o":2}}', '',
                if(step_status = 'running', stuck_after, NULL), 2, updated_at
            FROM (SELECT project, flow, run_id, status, started_at, error_type, error_message,
                         stuck_after, updated_at
                  FROM {DB}.runs WHERE status != 'scheduled' AND version = {steps} * 2 + 2
                  ORDER BY run_id LIMIT {count} OFFSET {first})
            ARRAY JOIN range({steps}) AS s
        """)
    print(f"  steps: {time.perf_counter() - began:.1f} s", flush=True)

    began = time.perf_counter()
    flows = []
    for project in PROJECTS:
        for flow in FLOW_NAMES:
            step_json = ",".join(
                f'{{"deadline_ms":null,"name":"Step {s}","sdk_step_key":"step-{s}"}}'
                for s in range(steps + 1)  # one more than ever reports: missing
            )
            edges = ",".join(
                f'{{"source":"step-{s}","target":"step-{s + 1}"}}' for s in range(steps)
            )
            flows.append([project, flow, flow.title(), None, f"[{step_json}]", f"[{edges}]", now])
    client.insert(
        f"{DB}.flows", flows,
        column_names=["project", "slug", "name", "step_deadline_ms", "steps", "edges",
                      "defined_at"],
    )
    # Events of the newest runs: a start and an end per step; failed runs' last step failed
    # twice before (attempts 1 and 2) and for good at attempt 3.
    client.command(f"""
        INSERT INTO {DB}.events (event_id, type, schema_version, project, flow, run_id,
            step_key, attempt, seq, ts, payload, log_partition, log_offset)
        SELECT lower(hex(cityHash64(run_id, step_key, a, e))), if(e = 0, 'step.started',
               if(status = 'failed', 'step.failed', 'step.completed')), 1, project, flow,
               run_id, step_key, a, a * 2 + e, coalesce(started_at, updated_at)
               + toIntervalMillisecond(a * 100 + e * 8),
               if(e = 0, '{_STARTED}', if(status = 'failed', '{_FAILED}', '{_COMPLETED}')),
               0, rowNumberInAllBlocks()
        FROM (SELECT * FROM {DB}.steps ORDER BY updated_at DESC LIMIT {event_runs * steps})
        ARRAY JOIN arrayFlatten(arrayMap(x -> [(x, 0), (x, 1)], range(1, attempt + 1))) AS ae
        -- a: the attempt, e: 0 for its start, 1 for its end
        WHERE (ae.1 AS a) >= 1 AND (ae.2 AS e) >= 0
    """)
    print(f"  flows and events: {time.perf_counter() - began:.1f} s", flush=True)
    client.command(f"OPTIMIZE TABLE {DB}.steps FINAL")


def settle(client: Client, deadline_s: float = 600) -> None:
    """Wait for the engine's background merges of the database to end (a load leaves many):
    timings taken while they run measure the merges. Merges the engine starts later are part
    of what a live table costs, and are left running."""
    began = time.perf_counter()
    while time.perf_counter() - began < deadline_s:
        running = client.command(
            "SELECT count() FROM system.merges WHERE database = {db:String}",
            parameters={"db": DB},
        )
        if not running:
            break
        time.sleep(1)  # polling the engine's own state: there is no event to wait on
    print(f"merges settled after {time.perf_counter() - began:.0f} s", flush=True)


def timed(action: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median and p95 of `repeat` runs of `action`, in ms (after one run to warm caches)."""
    action()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps-per-run", type=int, default=10)
    parser.add_argument("--event-runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--path", help="chDB path (default: a temporary directory)")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="steplog-run-pages-") as scratch:
        client = open_clickhouse(f"chdb://{arguments.path or scratch}")
        client.command(f"DROP DATABASE IF EXISTS {DB}")
        migrate(client, DB)
        now = datetime.now(UTC).replace(microsecond=0)
        print(f"loading {arguments.runs:,} runs, {arguments.runs * arguments.steps_per_run:,} "
              f"steps, events of {arguments.event_runs:,} runs", flush=True)
        began = time.perf_counter()
        load(client, arguments.runs, arguments.steps_per_run, arguments.event_runs, now)
        print(f"loaded in {time.perf_counter() - began:.1f} s", flush=True)
        settle(client)
        print("\n## as loaded: a fifth of the runs with an older row not merged away")
        report(client, arguments.repeat, now)
        # What background merges reach when writes pause: one part per partition, so FINAL
        # has nothing to merge (the other bound of what a live table costs).
        for table in ("runs", "run_list"):
            client.command(f"OPTIMIZE TABLE {DB}.{table} FINAL")
        print("\n## after OPTIMIZE FINAL of runs and run_list")
        report(client, arguments.repeat, now)


def report(client: Client, repeat: int, now: datetime) -> None:
    """Time each read beside its baseline over the views; print a table."""
    lag = LagView(total=0, partitions={}, error=None)
    newest = list_runs(client, DB, RunFilter())
    sample = newest.runs[7]
    detail_id = str(client.query(
        f"SELECT run_id FROM {DB}.run_list WHERE status = 'failed' AND created_at >= "
        "(SELECT max(created_at) FROM " + DB + ".run_list) - INTERVAL 1 HOUR LIMIT 1"
    ).result_rows[0][0])
    prefix = sample.run_id[:5]
    list_sql = f"SELECT * FROM {DB}.runs_current WHERE {{where}} ORDER BY created_at DESC, " \
        "run_id DESC LIMIT 51"
    counts_sql = f"SELECT status, count() FROM {DB}.runs_current WHERE {{where}} GROUP BY status"

    def plain_list(where: str, counted: str = "1") -> Callable[[], Any]:
        return lambda: (client.query(list_sql.format(where=where)),
                        client.query(counts_sql.format(where=counted)))

    last = newest.runs[-1]
    keyset = (f"(created_at, run_id) < (toDateTime64('{last.created_at:%Y-%m-%d %H:%M:%S.%f}', "
              f"6, 'UTC'), '{last.run_id}')")
    day_ago = f"toDateTime64('{now - timedelta(hours=24):%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("list, no filter", lambda: list_runs(client, DB, RunFilter()), plain_list("1")),
        ("list, one flow", lambda: list_runs(client, DB, RunFilter(project="shop", flow="refund")),
         plain_list(*["project = 'shop' AND flow = 'refund'"] * 2)),
        ("list, status=failed", lambda: list_runs(client, DB, RunFilter(status=("failed",))),
         plain_list("status = 'failed'")),
        ("list, search (run-id prefix)", lambda: list_runs(client, DB, RunFilter(search=prefix)),
         plain_list(*[f"(startsWith(run_id, '{prefix}') OR trigger_event = '{prefix}' OR "
                      f"trigger_event_id = '{prefix}')"] * 2)),
        ("list, search (trigger name, 10% of runs)",
         lambda: list_runs(client, DB, RunFilter(search="invoice.due")),
         plain_list(*["trigger_event = 'invoice.due'"] * 2)),
        ("list, page 2 (cursor)",
         lambda: list_runs(client, DB, RunFilter(), cursor=newest.next_cursor),
         plain_list(keyset)),
        ("runs_changed", lambda: runs_changed(client, DB, RunFilter()),
         lambda: client.query(f"SELECT count(), max(updated_at) FROM {DB}.runs_current")),
        ("run detail", lambda: run_detail(client, DB, detail_id),
         lambda: [client.query(sql, parameters={"id": detail_id}) for sql in (
             f"SELECT * FROM {DB}.runs_current WHERE run_id = {{id:String}}",
             f"SELECT * FROM {DB}.steps_current WHERE run_id = {{id:String}}",
             f"SELECT * FROM {DB}.events FINAL WHERE run_id = {{id:String}}",
             f"SELECT * FROM {DB}.runs_current WHERE parent_run_id = {{id:String}} "
             "OR retrigger_of = {id:String}",
         )]),
        ("ops summary", lambda: ops_summary(client, DB, lag=lag),
         lambda: [client.query(sql) for sql in (
             f"SELECT flow, toStartOfFiveMinutes(finished_at) AS b, countIf(status = 'failed'), "
             f"count() FROM {DB}.runs_current WHERE finished_at >= {day_ago} GROUP BY flow, b",
             f"SELECT count(), max(overdue_by_ms) FROM {DB}.runs_overdue",
             f"SELECT * FROM {DB}.runs_current WHERE status = 'stuck' ORDER BY created_at "
             "LIMIT 20",
             f"SELECT count() FROM {DB}.dead_letters FINAL",
         )]),
    ]
    parts = client.query(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE database = {db:String} "
        "AND active GROUP BY table ORDER BY table", parameters={"db": DB},
    ).result_rows
    print("active parts: " + ", ".join(f"{table} {count} ({rows:,} rows)"
                                        for table, count, rows in parts))
    print(f"\n| read | median ms | p95 ms | baseline median ms | baseline p95 ms | "
          f"p95 ratio |  (n={repeat})")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, read, baseline in cases:
        median, p95 = timed(read, repeat)
        base_median, base_p95 = timed(baseline, max(5, repeat // 5))
        print(f"| {name} | {median:.1f} | {p95:.1f} | {base_median:.1f} | {base_p95:.1f} | "
              f"{base_p95 / p95:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
