"""Real ClickHouse clients against the SQL endpoint with their default settings (issue 19).

The clients analysts' tools are built on: clickhouse-jdbc through plain JDBC and
DatabaseMetaData (DBeaver, Metabase, DataGrip), clickhouse-go v2 over HTTP with LZ4 and with
Grafana's data source's settings, @clickhouse/client, clickhouse-connect (rows, pandas, Arrow)
and clickhouse-sqlalchemy's inspector. Each runs the same checks over runs the real fold made and
the real writer inserted: a GROUP BY, DateTime64, Nullable and Array columns, a parameterized
query and the client's own introspection. The JVM, Go and Node programs live in tests/compat/
and run as subprocesses (tests/compat/clients.py), built once by `make compat-clients`; the key
is a read key, as an analyst's.
"""

from __future__ import annotations

import ast
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect
import pandas
import pyarrow as pa
import pytest
import sqlalchemy

from steplog.processors.fold.run import fold_events
from steplog.processors.projection_batch import ProjectionBatch
from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.migrations import migrate
from steplog.projections.writer import ProjectionWriter
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepStarted,
)
from steplog.settings import load_settings
from tests.compat.clients import (
    GROUP_BY,
    PARAMETERIZED,
    SERVER_SIDE,
    TYPED,
    Lines,
    as_lines,
    build_clients,
    go_command,
    java_command,
    node_command,
    run_client,
)
from tests.integration.sql_endpoint_server import Endpoint, serving

# Microseconds, so a client that drops DateTime64(6)'s precision shows it.
STARTED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
AT = "2026-03-01 12:00:00.123456"
FINISHED = "2026-03-01 12:05:00.123456"

EXPECTED: Lines = {
    "group_by": [["checkout", "2", "1"], ["refund", "1", "1"]],
    "typed": [["r1", AT, FINISHED, "charge,ship"], ["r2", AT, "NULL", "charge,ship"],
              ["r3", AT, FINISHED, "charge,ship"]],
    "parameterized": [["r1"], ["r2"]],
    "columns": [["created_at", "DateTime64(6, 'UTC')"],
                ["started_at", "Nullable(DateTime64(6, 'UTC'))"],
                ["finished_at", "Nullable(DateTime64(6, 'UTC'))"],
                ["updated_at", "DateTime64(6, 'UTC')"]],
}

def run_events(run_id: str, flow: str, *, finished: bool) -> list[Event]:
    """A run with steps `charge` and `ship`, finished or still running in `ship`."""
    seq = itertools.count(1)

    def envelope(minutes: int) -> dict[str, Any]:
        number = next(seq)
        return {"project": "acme", "flow": flow, "run_id": run_id, "attempt": 1,
                "event_id": f"{run_id}-{number}", "seq": number,
                "ts": STARTED + timedelta(minutes=minutes)}

    events: list[Event] = [
        RunStarted(**envelope(0), payload=RunStartedPayload()),
        StepStarted(**envelope(1), step_key="charge"),
        StepCompleted(**envelope(2), step_key="charge", payload=StepCompletedPayload(output=1)),
        StepStarted(**envelope(3), step_key="ship"),
    ]
    if finished:
        events += [
            StepCompleted(**envelope(4), step_key="ship", payload=StepCompletedPayload(output=2)),
            RunCompleted(**envelope(5)),
        ]
    return events


@pytest.fixture(scope="module")
def endpoint(clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """The endpoint over a migrated database holding three runs (r2 still running)."""
    database = f"clients_{uuid.uuid4().hex[:10]}"
    client = open_clickhouse(clickhouse_dsn)
    migrate(client, database)
    batch = ProjectionBatch()
    offsets = itertools.count()
    for events in (run_events("r1", "checkout", finished=True),
                   run_events("r2", "checkout", finished=False),
                   run_events("r3", "refund", finished=True)):
        batch.add_effects(fold_events(events, None)[1])
        for event in events:
            batch.add_event(event, 0, next(offsets))
    assert ProjectionWriter(client, database).write(batch.table_rows()).refused == []
    settings = load_settings(clickhouse_dsn=clickhouse_dsn, clickhouse_database=database,
                             data_dir=tmp_path_factory.mktemp("clients"))
    try:
        with serving(settings) as served:
            yield served
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def built() -> None:
    build_clients()


def run_program(command: list[str], endpoint: Endpoint) -> Lines:
    return run_client(command, port=endpoint.port, database=endpoint.database,
                      key=endpoint.keys.read)


def test_clickhouse_jdbc_with_database_metadata(built: None, endpoint: Endpoint) -> None:
    lines = run_program(java_command(), endpoint)
    tables = {name for name, in lines.pop("tables")}
    assert lines == EXPECTED
    assert {"runs", "runs_current", "runs_overdue"} <= tables  # getTables("runs%")


def test_clickhouse_go_over_http_with_lz4(built: None, endpoint: Endpoint) -> None:
    assert run_program(go_command("lz4"), endpoint) == EXPECTED


def test_clickhouse_go_with_grafanas_settings(built: None, endpoint: Endpoint) -> None:
    """Grafana's default 60 s query timeout: clickhouse-go asks max_execution_time=64, and the
    endpoint keeps its own 60 (steplog/server/sql_settings.py)."""
    assert run_program(go_command("grafana"), endpoint) == EXPECTED


def test_node_client(built: None, endpoint: Endpoint) -> None:
    assert run_program(node_command(), endpoint) == EXPECTED


def test_clickhouse_connect_rows_pandas_and_arrow(endpoint: Endpoint) -> None:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port,
                                           database=endpoint.database, password=endpoint.keys.read)
    try:
        described = client.query("SELECT * FROM runs_current LIMIT 0")
        columns = [[name, kind.name] for name, kind
                   in zip(described.column_names, described.column_types, strict=True)
                   if name.endswith("ed_at")]
        assert {
            **as_lines("group_by", client.query(GROUP_BY).result_rows),
            **as_lines("typed", client.query(TYPED).result_rows),
            **as_lines("parameterized", client.query(
                SERVER_SIDE, parameters={"flow": "checkout", "steps": 2}).result_rows),
            "columns": columns,
        } == EXPECTED
        client_side = PARAMETERIZED.format(flow="%(flow)s", steps="%(steps)s")
        assert client.query(client_side, parameters={"flow": "checkout", "steps": 2}
                            ).result_rows == [("r1",), ("r2",)]

        frame = client.query_df(TYPED)
        assert str(frame["created_at"].dtype) == "datetime64[us]"
        assert frame["finished_at"].isna().tolist() == [False, True, False]
        assert frame["step_keys"].map(list).tolist() == [["charge", "ship"]] * 3

        table = client.query_arrow(TYPED)
        assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
        assert table.column("finished_at").null_count == 1
        assert table.column("step_keys").to_pylist() == [["charge", "ship"]] * 3
    finally:
        client.close()


def test_clickhouse_sqlalchemy_inspector_and_pandas(endpoint: Endpoint) -> None:
    engine = sqlalchemy.create_engine(
        f"clickhouse+http://default:{endpoint.keys.read}@127.0.0.1:{endpoint.port}"
        f"/{endpoint.database}")
    try:
        with engine.connect() as connection:
            typed = connection.execute(sqlalchemy.text(TYPED)).all()
            bound = connection.execute(
                sqlalchemy.text(PARAMETERIZED.format(flow=":flow", steps=":steps")),
                {"flow": "checkout", "steps": 2}).all()
            assert {
                **as_lines("group_by", connection.execute(sqlalchemy.text(GROUP_BY)).all()),
                # The dialect's HTTP driver has no Array converter: the cell stays the
                # TabSeparated text, against a ClickHouse server too.
                **as_lines("typed", [(*row[:3], ast.literal_eval(row[3])) for row in typed]),
                **as_lines("parameterized", bound),
            } == {key: EXPECTED[key] for key in ("group_by", "typed", "parameterized")}
            assert typed[0][3] == "['charge','ship']"

        inspector = sqlalchemy.inspect(engine)
        assert {"runs", "steps", "events"} <= set(inspector.get_table_names())
        columns = {column["name"]: column["nullable"]
                   for column in inspector.get_columns("runs_current")
                   if column["name"].endswith("ed_at")}
        assert columns == {"created_at": False, "started_at": True, "finished_at": True,
                           "updated_at": False}

        frame = pandas.read_sql(sqlalchemy.text(GROUP_BY), engine)
        assert frame.values.tolist() == [["checkout", 2, 1], ["refund", 1, 1]]
    finally:
        engine.dispose()
