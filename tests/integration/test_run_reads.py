"""The dashboard's reads (projections/run_reads.py, ops_reads.py) on the real engine, over rows
the real fold made and the real writer inserted: the run list's order, paging, filters, derived
statuses, counts and search; a run's detail with its attempts, missing steps, graph and links;
the operations summary; every read limited to a key's projects; and migration 4 on a database
that predates it."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from steplog.processors.fold.run import fold_events
from steplog.processors.projection_batch import ProjectionBatch
from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.created_at import earliest_known
from steplog.projections.migrations import MIGRATIONS, migrate
from steplog.projections.ops_reads import ops_summary
from steplog.projections.read_models import LagView, RunFilter, RunListItem
from steplog.projections.run_detail_reads import run_detail
from steplog.projections.run_reads import (
    CursorError,
    RunFilterError,
    list_flows,
    list_runs,
    runs_changed,
)
from steplog.projections.writer import ProjectionWriter
from steplog.schemas.base import ErrorInfo, TriggerInfo
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunFailed,
    RunFailedPayload,
    RunScheduled,
    RunScheduledPayload,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepStarted,
)
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LAG = LagView(total=0, partitions={}, error=None)


@pytest.fixture
def db(clickhouse_dsn: str) -> Iterator[tuple[Client, str]]:
    """A migrated database of the test's own on the session's engine (no broker needed)."""
    client = open_clickhouse(clickhouse_dsn)
    database = f"reads_{uuid.uuid4().hex[:10]}"
    migrate(client, database)
    try:
        yield client, database
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database}")


class Run:
    """The events of one run, each at NOW + `minutes`."""

    _ids = itertools.count()

    def __init__(self, run_id: str, flow: str = "checkout", project: str = "acme") -> None:
        self.envelope = {"project": project, "flow": flow, "run_id": run_id}
        self.seq = 0

    def _next(self, minutes: float, attempt: int = 1) -> dict[str, Any]:
        self.seq += 1
        return {**self.envelope, "event_id": f"e{next(self._ids)}", "seq": self.seq,
                "attempt": attempt, "ts": NOW + timedelta(minutes=minutes)}

    def scheduled(self, minutes: float, due: float) -> RunScheduled:
        return RunScheduled(**self._next(minutes), payload=RunScheduledPayload(
            start_at=NOW + timedelta(minutes=due)))

    def started(self, minutes: float, **payload: Any) -> RunStarted:
        return RunStarted(**self._next(minutes), payload=RunStartedPayload(**payload))

    def step_started(self, key: str, minutes: float, attempt: int = 1) -> StepStarted:
        return StepStarted(**self._next(minutes, attempt), step_key=key)

    def step_completed(self, key: str, minutes: float, attempt: int = 1,
                       output: Any = None) -> StepCompleted:
        return StepCompleted(**self._next(minutes, attempt), step_key=key,
                             payload=StepCompletedPayload(output=output))

    def step_failed(self, key: str, minutes: float, attempt: int = 1,
                    retry_in: float | None = None) -> StepFailed:
        retry_at = None if retry_in is None else NOW + timedelta(minutes=minutes + retry_in)
        return StepFailed(**self._next(minutes, attempt), step_key=key, payload=StepFailedPayload(
            error=ErrorInfo(type="Timeout", message="upstream timed out"), retry_at=retry_at))

    def completed(self, minutes: float) -> RunCompleted:
        return RunCompleted(**self._next(minutes))

    def failed(self, minutes: float) -> RunFailed:
        return RunFailed(**self._next(minutes), payload=RunFailedPayload(
            error=ErrorInfo(type="Boom", message="it broke", stack="trace")))


def write(db: tuple[Client, str], *runs: Sequence[Event],
          flows: tuple[FlowDefinition, ...] = ()) -> None:
    """Fold each run's events as the processors do and write the batch with the real writer."""
    client, database = db
    batch = ProjectionBatch()
    for definition in flows:
        batch.add_flow(definition)
    offsets = itertools.count()
    for events in runs:
        flow = next((f for f in flows if f.slug == events[0].flow), None)
        _, effects = fold_events(events, flow)
        batch.add_effects(effects)
        for event in events:
            batch.add_event(event, 0, next(offsets))
    assert ProjectionWriter(client, database).write(batch.table_rows()).refused == []


def ids(runs: list[RunListItem]) -> list[str]:
    return [run.run_id for run in runs]


# --------------------------------------------------------------------------- the list


def test_runs_come_newest_first_and_pages_follow_the_cursor_across_equal_created_at(
    db: tuple[Client, str],
) -> None:
    client, database = db
    # Three runs begin in the same microsecond: the run id orders them.
    created = {"r1": -50, "r2": -40, "t1": -30, "t2": -30, "t3": -30, "r3": -20, "r4": -10}
    write(db, *[[Run(run_id).step_started("a", minutes)] for run_id, minutes in created.items()])
    expected = sorted(created, key=lambda run_id: (created[run_id], run_id), reverse=True)

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = list_runs(client, database, RunFilter(), cursor=cursor, limit=2, now=NOW)
        seen += ids(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected == ["r4", "r3", "t3", "t2", "t1", "r2", "r1"]
    first = list_runs(client, database, RunFilter(), limit=50, now=NOW)
    assert first.next_cursor is None and first.runs[0].created_at == NOW - timedelta(minutes=10)


def test_each_filter_counts_by_derived_status_and_the_status_filter_reads_derived_status(
    db: tuple[Client, str],
) -> None:
    client, database = db
    deadline_flow = FlowDefinition(project="acme", slug="slow", steps=[FlowStep(
        sdk_step_key="wait", deadline_ms=60_000)], ts=NOW - timedelta(days=1))
    done, failing, stuck, overdue, later, running = (
        Run("done"), Run("failing"), Run("stuck", "slow"), Run("overdue", "nightly"),
        Run("later", "nightly"), Run("running", project="other"),
    )
    write(
        db,
        [done.step_started("a", -60), done.step_completed("a", -59), done.completed(-58)],
        [failing.step_started("a", -50), failing.step_failed("a", -49)],
        [stuck.step_started("wait", -40)],  # its deadline passed at -39
        [overdue.scheduled(-30, due=-5)],
        [later.scheduled(-20, due=+60)],
        [running.step_started("a", -10)],
        flows=(deadline_flow,),
    )

    def listed(**filter_fields: Any) -> list[str]:
        return ids(list_runs(client, database, RunFilter(**filter_fields), now=NOW).runs)

    page = list_runs(client, database, RunFilter(), now=NOW)
    assert {run.run_id: run.status for run in page.runs} == {
        "done": "completed", "failing": "failed", "stuck": "stuck", "overdue": "overdue",
        "later": "scheduled", "running": "running",
    }
    assert {run.run_id: run.recorded_status for run in page.runs}["stuck"] == "running"
    assert page.counts == {"completed": 1, "failed": 1, "stuck": 1, "overdue": 1,
                           "scheduled": 1, "running": 1}
    assert listed(status=("stuck",)) == ["stuck"]
    assert listed(status=("overdue", "failed")) == ["overdue", "failing"]
    assert listed(status=("running",)) == ["running"]
    assert listed(project="other") == ["running"]
    assert listed(flow="nightly") == ["later", "overdue"]
    assert listed(since=NOW - timedelta(minutes=45), until=NOW - timedelta(minutes=15)) == [
        "later", "overdue", "stuck"]
    # Counts leave out the status part of the filter, not the rest.
    by_flow = list_runs(client, database, RunFilter(flow="nightly", status=("overdue",)), now=NOW)
    assert ids(by_flow.runs) == ["overdue"] and by_flow.counts == {"overdue": 1, "scheduled": 1}
    # An hour later the scheduled run is overdue too: the derived status follows `now`.
    later_page = list_runs(client, database, RunFilter(flow="nightly"),
                           now=NOW + timedelta(hours=2))
    assert later_page.counts == {"overdue": 2}
    failing_item = next(run for run in page.runs if run.run_id == "failing")
    assert failing_item.error is not None and failing_item.error.message == "upstream timed out"


def test_search_finds_a_run_by_id_prefix_and_by_its_trigger(db: tuple[Client, str]) -> None:
    client, database = db
    signalled, plain = Run("ord-7f3a9c"), Run("ord-8b21aa")
    write(db, [signalled.started(-5, trigger=TriggerInfo(name="order.created", event_id="sig-42"),
                                 input={"order": 7})],
          [plain.step_started("a", -4)])

    def found(search: str) -> list[str]:
        return ids(list_runs(client, database, RunFilter(search=search), now=NOW).runs)

    assert found("ord-7f3a9c") == ["ord-7f3a9c"]
    assert found("ord-7f") == ["ord-7f3a9c"]
    assert found("ord-") == ["ord-8b21aa", "ord-7f3a9c"]
    assert found("ord") == []  # a prefix needs 4 characters
    assert found("order.created") == ["ord-7f3a9c"]
    assert found("sig-42") == ["ord-7f3a9c"]
    page = list_runs(client, database, RunFilter(search="ord-"), now=NOW)
    assert page.counts == {"running": 2}


def test_a_bad_cursor_or_status_is_refused_naming_it(db: tuple[Client, str]) -> None:
    client, database = db
    with pytest.raises(CursorError, match="cursor"):
        list_runs(client, database, RunFilter(), cursor="not-a-cursor!", now=NOW)
    with pytest.raises(CursorError, match="cursor"):
        list_runs(client, database, RunFilter(), cursor="W1wgMl0", now=NOW)  # [1, 2]
    with pytest.raises(RunFilterError, match="status.*'sleeping'"):
        list_runs(client, database, RunFilter(status=("sleeping",)), now=NOW)


def test_newest_version_changes_when_a_matching_run_is_written(db: tuple[Client, str]) -> None:
    client, database = db
    run = Run("r1")
    events: list[Event] = [run.step_started("a", -3)]
    write(db, events)
    before = list_runs(client, database, RunFilter(), now=NOW).newest_version
    assert runs_changed(client, database, RunFilter()) == before
    other_flow = runs_changed(client, database, RunFilter(flow="elsewhere"))
    write(db, [*events, run.step_completed("a", -2)])
    assert runs_changed(client, database, RunFilter()) != before
    assert runs_changed(client, database, RunFilter(flow="elsewhere")) == other_flow


# --------------------------------------------------------------------------- one run


def test_detail_shows_each_attempt_missing_steps_and_the_graph(db: tuple[Client, str]) -> None:
    client, database = db
    flow = FlowDefinition(
        project="acme", slug="checkout", ts=NOW - timedelta(days=1),
        steps=[FlowStep(sdk_step_key="cart", name="Validate cart"),
               FlowStep(sdk_step_key="charge", name="Charge card"),
               FlowStep(sdk_step_key="receipt")],
        edges=[FlowEdge(source="cart", target="charge"),
               FlowEdge(source="charge", target="receipt")],
    )
    run = Run("r1")
    write(db, [
        run.step_started("cart", -10), run.step_completed("cart", -9, output={"items": 2}),
        run.step_started("charge", -8), run.step_failed("charge", -7, retry_in=1),
        run.step_started("charge", -6, attempt=2),
        run.step_completed("charge", -5, attempt=2, output="ok"),
        run.failed(-4),
    ], flows=(flow,))

    detail = run_detail(client, database, "r1", now=NOW)

    assert detail is not None and detail.run.status == "failed"
    assert detail.error is not None and detail.error.stack == "trace"
    assert [(s.step_key, s.name, s.status) for s in detail.steps] == [
        ("cart", "Validate cart", "completed"), ("charge", "Charge card", "completed"),
        ("receipt", "receipt", "missing")]
    charge = detail.steps[1]
    assert [(a.attempt, a.status) for a in charge.attempts] == [(1, "retrying"),
                                                                (2, "completed")]
    assert charge.attempts[0].error is not None
    assert charge.attempts[0].duration_ms == 60_000.0
    assert charge.attempts[1].output == "ok" and charge.output == "ok"
    assert detail.steps[0].output == {"items": 2}
    assert detail.graph is not None
    assert [(n.id, n.status) for n in detail.graph.nodes] == [
        ("cart", "completed"), ("charge", "completed"), ("receipt", "missing")]
    assert len(detail.graph.edges) == 2
    assert run_detail(client, database, "nobody", now=NOW) is None


def test_detail_links_parent_children_and_retriggers(db: tuple[Client, str]) -> None:
    client, database = db
    parent, child, first, again = Run("parent"), Run("child"), Run("first"), Run("again")
    write(
        db,
        [parent.started(-10, app="shop", input={"order": 1},
                        trigger=TriggerInfo(name="order.created", event_id="sig-1"))],
        [child.started(-9, app="shop", parent_run_id="parent", parent_step_key="fraud")],
        [first.started(-8, app="shop"), first.failed(-7)],
        [again.started(-6, app="shop", retrigger_of="first")],
    )
    parent_detail = run_detail(client, database, "parent", now=NOW)
    assert parent_detail is not None
    assert [link.run_id for link in parent_detail.children] == ["child"]
    assert parent_detail.trigger_data == {"order": 1} and parent_detail.graph is None
    child_detail = run_detail(client, database, "child", now=NOW)
    assert child_detail is not None and child_detail.parent is not None
    assert (child_detail.parent.run_id, child_detail.parent.status) == ("parent", "running")
    assert child_detail.trigger_data is None
    first_detail = run_detail(client, database, "first", now=NOW)
    assert first_detail is not None and [r.run_id for r in first_detail.retriggers] == ["again"]
    again_detail = run_detail(client, database, "again", now=NOW)
    assert again_detail is not None and again_detail.retrigger_of is not None
    assert (again_detail.retrigger_of.run_id, again_detail.retrigger_of.status) == (
        "first", "failed")


# --------------------------------------------------------------------------- operations


def test_ops_buckets_failures_flags_a_spike_and_traces_overdue_runs(
    db: tuple[Client, str],
) -> None:
    client, database = db
    runs: list[list[Event]] = []
    for number in range(6):  # six failures in the last 15 minutes, none before: a spike
        run = Run(f"f{number}", flow="billing")
        runs.append([run.step_started("a", -12 + number), run.failed(-11 + number)])
    done = Run("ok")
    runs.append([done.step_started("a", -300), done.completed(-299)])
    due = Run("due", "nightly")  # overdue from -60 until it started at -20
    runs.append([due.scheduled(-120, due=-60), due.step_started("a", -20)])
    late = Run("late", "nightly")  # overdue since -30, still waiting
    runs.append([late.scheduled(-90, due=-30)])
    write(db, *runs)
    client.insert(f"{database}.dead_letters", [
        [NOW - timedelta(hours=1), "bad json", "", "events", 0, 1, None, "e30=", 2, False, 0, 0],
        [NOW - timedelta(days=3), "too big", "", "events", 0, 2, None, "", 0, True, 0, 1],
    ], column_names=["ts", "reason", "field", "source_topic", "source_partition",
                     "source_offset", "key_b64", "value_b64", "value_bytes", "value_truncated",
                     "dlq_partition", "dlq_offset"])

    ops = ops_summary(client, database, lag=LAG, now=NOW, window=timedelta(hours=6))

    assert sum(bucket.failed for bucket in ops.failures) == 6
    assert {bucket.flow for bucket in ops.failures} == {"billing"}
    assert all(bucket.bucket.minute % 5 == 0 for bucket in ops.failures)
    assert ops.spike.flagged and ops.spike.recent_failed == 6 and ops.spike.flows == ["billing"]
    assert (ops.overdue_count, ops.overdue_oldest_ms) == (1, 30 * 60_000)
    trend = {point.at: point.count for point in ops.overdue_trend}
    assert trend[NOW - timedelta(minutes=90)] == 0
    assert trend[NOW - timedelta(minutes=45)] == 1  # `due` only
    assert trend[NOW - timedelta(minutes=25)] == 2
    assert trend[NOW] == 1  # `due` started at -20
    assert (ops.dead_letters_24h, ops.dead_letters_total) == (1, 2)
    assert ops.lag == LAG


def test_ops_lists_stuck_runs_oldest_deadline_first_and_no_spike_below_the_minimum(
    db: tuple[Client, str],
) -> None:
    client, database = db
    flow = FlowDefinition(project="acme", slug="slow", steps=[FlowStep(
        sdk_step_key="wait", deadline_ms=60_000)], ts=NOW - timedelta(days=1))
    stuck = [Run(f"s{number}", "slow") for number in range(3)]
    failing = Run("f")
    write(db, *[[run.step_started("wait", -30 + number)] for number, run in enumerate(stuck)],
          [failing.step_started("a", -3), failing.failed(-2)], flows=(flow,))
    ops = ops_summary(client, database, lag=LAG, now=NOW)
    assert ops.stuck_count == 3 and ids(ops.stuck_runs) == ["s0", "s1", "s2"]
    assert not ops.spike.flagged and ops.spike.recent_failed == 1


# --------------------------------------------------------------------------- a key's projects


def test_reads_for_a_key_of_some_projects_leave_every_other_project_out(
    db: tuple[Client, str],
) -> None:
    client, database = db
    slow = FlowDefinition(project="beta", slug="slow", steps=[FlowStep(
        sdk_step_key="wait", deadline_ms=60_000)], ts=NOW - timedelta(days=1))
    mine = Run("a1")  # project acme
    stuck, failed, late = Run("b1", "slow", "beta"), Run("b2", project="beta"), Run(
        "b3", "nightly", "beta")
    write(db, [mine.started(-10), mine.completed(-9)], [stuck.step_started("wait", -30)],
          [failed.step_started("a", -3), failed.failed(-2)], [late.scheduled(-90, due=-30)],
          flows=(slow,))
    acme = ("acme",)

    page = list_runs(client, database, RunFilter(projects=acme), now=NOW)
    assert ids(page.runs) == ["a1"] and page.counts == {"completed": 1}
    assert list_runs(client, database, RunFilter(projects=acme, project="beta"), now=NOW).runs == []
    assert list_runs(client, database, RunFilter(projects=acme, search="b1"), now=NOW).runs == []
    assert list_runs(client, database, RunFilter(projects=()), now=NOW).runs == []
    assert len(list_runs(client, database, RunFilter(), now=NOW).runs) == 4
    assert run_detail(client, database, "b1", projects=acme, now=NOW) is None
    assert run_detail(client, database, "a1", projects=acme, now=NOW) is not None
    assert runs_changed(client, database, RunFilter(projects=acme)) == runs_changed(
        client, database, RunFilter(project="acme"))
    assert list_flows(client, database, projects=acme) == [("acme", "checkout")]
    assert ("beta", "slow") in list_flows(client, database)

    theirs = ops_summary(client, database, lag=LAG, now=NOW)
    assert (theirs.stuck_count, theirs.overdue_count) == (1, 1)
    assert sum(bucket.failed for bucket in theirs.failures) == 1
    ops = ops_summary(client, database, lag=LAG, projects=acme, now=NOW)
    assert (ops.failures, ops.stuck_count, ops.stuck_runs, ops.overdue_count) == ([], 0, [], 0)
    assert all(point.count == 0 for point in ops.overdue_trend)


# --------------------------------------------------------------------------- migration 4


def test_migration_4_backfills_created_at_and_run_list_from_older_runs_rows(
    clickhouse_dsn: str,
) -> None:
    client = open_clickhouse(clickhouse_dsn)
    database = f"old_{uuid.uuid4().hex[:10]}"
    try:
        # A database as migration 3 left it: runs without created_at, no run_list.
        migrate(client, database)
        client.command(f"DROP TABLE {database}.run_list")
        client.command(f"DROP TABLE {database}.dead_letters")
        client.command(f"ALTER TABLE {database}.runs DROP COLUMN created_at")
        client.command(f"DELETE FROM {database}.schema_migrations WHERE version = 4")
        client.command(f"OPTIMIZE TABLE {database}.schema_migrations FINAL")
        scheduled, started = NOW + timedelta(hours=1), NOW - timedelta(minutes=5)
        client.insert(f"{database}.runs", [
            ["acme", "nightly", "ahead", "scheduled", scheduled, None, 1,
             NOW - timedelta(minutes=9)],
            ["acme", "checkout", "began", "running", None, started, 3, NOW],
        ], column_names=["project", "flow", "run_id", "status", "scheduled_for", "started_at",
                         "version", "updated_at"])

        assert [m.version for m in migrate(client, database)] == [4]

        rows = client.query(
            f"SELECT run_id, created_at FROM {database}.run_list FINAL ORDER BY run_id"
        ).result_rows
        assert [(run_id, at.replace(tzinfo=UTC)) for run_id, at in rows] == [
            ("ahead", earliest_known(scheduled, None, NOW - timedelta(minutes=9))),
            ("began", earliest_known(None, started, NOW)),
        ]
        assert rows[1][1].replace(tzinfo=UTC) == started
        assert {1, 2, 3, 4} <= {m.version for m in MIGRATIONS}
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database}")
