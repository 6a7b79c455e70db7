"""The store process's SQL endpoint knows the deployment's keys from the keys topic.

The store process (a spawned child owning its own chDB files) follows the keys topic itself: a
key published after it started is accepted, and once revoked it is refused, without a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from steplog.server.key_ring import mint_key, publish_key
from steplog.server.principals import Role
from steplog.server.store_process import StoreProcess
from steplog.settings import Settings
from tests.conftest import free_port, wait_for, with_own_engine
from tests.integration.sql_endpoint_server import http


@pytest.fixture
def store(topics: Settings, tmp_path: Path) -> Iterator[tuple[StoreProcess, Settings]]:
    settings = with_own_engine(topics, tmp_path)
    process = StoreProcess(settings.clickhouse_dsn, settings.clickhouse_database)
    process.start()
    try:
        yield process, settings
    finally:
        process.stop()


def test_the_store_endpoint_follows_published_and_revoked_keys(
    store: tuple[StoreProcess, Settings],
) -> None:
    process, settings = store
    secret, record = mint_key(Role.READ, None, "analyst")
    port = free_port()
    process.serve_sql(port, settings)
    url = f"http://127.0.0.1:{port}"
    select = {"query": "SELECT count() FROM system.one"}
    assert http(url, key=secret, params=select).status == 401  # not published yet

    publish_key(settings, record)
    wait_for(lambda: http(url, key=secret, params=select).status == 200, timeout=30,
             what="the published key accepted")
    assert http(url, key=secret, params=select).body == "1\n"

    publish_key(settings, record.revoked(datetime.now(UTC)))
    wait_for(lambda: http(url, key=secret, params=select).status == 401, timeout=30,
             what="the revoked key refused")
