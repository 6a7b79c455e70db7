"""The store process against the real embedded engine: it migrates, writes what it is sent,
serves SQL, reports errors by table, and is stopped (or found dead) cleanly."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import pytest

from steplog.errors import ClickHouseError
from steplog.server.admin_key import ensure_admin_key
from steplog.server.store_process import StoreProcess
from steplog.settings import Settings
from steplog.projections.writer import TableRows
from tests.conftest import free_port


def flow_rows(*slugs: str) -> dict[str, TableRows]:
    columns = ("project", "slug", "name", "step_deadline_ms", "steps", "edges", "defined_at")
    now = datetime.now(UTC)
    steps = '[{"sdk_step_key": "charge"}]'
    return {
        "flows": TableRows(columns, [("shop", slug, slug, None, steps, "[]", now) for slug in slugs])
    }


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def store(tmp_path: Path) -> StoreProcess:
    return StoreProcess(f"chdb://{tmp_path / 'store'}", f"test_{uuid.uuid4().hex[:10]}")


def test_it_migrates_writes_and_serves_what_it_wrote_over_sql(
    store: StoreProcess, topics: Settings
) -> None:
    assert store.start() == []
    port = free_port()
    key = ensure_admin_key(topics)  # the endpoint answers keys of the settings' keys topic
    try:
        assert store.pid is not None and store.pid != os.getpid()
        assert store.write(flow_rows("checkout", "refund")).written == 2
        store.serve_sql(port, topics)
        sql = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, database=store.database, password=key or ""
        )
        slugs = sql.query("SELECT slug FROM flows FINAL ORDER BY slug").result_rows
        assert slugs == [("checkout",), ("refund",)]
    finally:
        store.stop()
    assert not port_open(port)


def test_a_restarted_store_hands_back_the_flows_it_holds(store: StoreProcess) -> None:
    store.start()
    store.write(flow_rows("checkout"))
    store.stop()
    try:
        assert [flow.slug for flow in store.start()] == ["checkout"]
    finally:
        store.stop()


def test_a_bad_batch_is_an_error_naming_the_table_and_the_store_carries_on(
    store: StoreProcess,
) -> None:
    store.start()
    try:
        bad = {"flows": TableRows(("project", "no_such_column"), [("shop", 1)])}
        with pytest.raises(ClickHouseError, match=r"flows"):
            store.write(bad)
        assert store.write(flow_rows("checkout")).written == 1
    finally:
        store.stop()


def test_a_dead_store_is_reported_not_waited_for(store: StoreProcess) -> None:
    store.start()
    try:
        assert store.pid is not None
        os.kill(store.pid, signal.SIGKILL)
        with pytest.raises(ClickHouseError, match=r"store process"):
            store.write(flow_rows("checkout"))
    finally:
        store.stop()
