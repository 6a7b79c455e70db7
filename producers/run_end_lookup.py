"""Asking ClickHouse for a run's end from the SDK: `RunEndLookup` and its light HTTP client.

A handle for a run started elsewhere asks ClickHouse first (producers/run_results.py says why
that cannot miss the end). The SQL and the reading of its row are projections/queries.py's; this
module only carries them over ClickHouse's HTTP interface with the standard library, because the
SDK does not depend on clickhouse-connect.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable

from steplog.errors import ClickHouseError
from steplog.projections.queries import RUN_END_SQL, RunEnd
from steplog.credentials import client_key
from steplog.settings import Settings

__all__ = ["RunEndLookup", "clickhouse_http_endpoint", "clickhouse_http_lookup"]

RunEndLookup = Callable[[str, str], RunEnd | None]
"""`lookup(run_id, project)`: the run's end as ClickHouse has it, or None. Blocking (it runs
in a worker thread); raises ClickHouseError when ClickHouse cannot be asked."""


def clickhouse_http_lookup(
    settings: Settings, *, timeout: float = 10.0, project_key: str | None = None
) -> RunEndLookup:
    """A RunEndLookup over ClickHouse's HTTP interface, with the standard library only (the
    SDK does not depend on clickhouse-connect): the server of STEPLOG_CLICKHOUSE_DSN, or, for
    the embedded engine, the stack's SQL endpoint on 127.0.0.1:STEPLOG_SQL_PORT, logged in
    with `project_key` (default STEPLOG_PROJECT_KEY, else the key Steplog's own clients send:
    STEPLOG_API_KEY or the local admin key). SQL needs a read key of every project (the
    embedded engine cannot confine SQL to a project), so a project-scoped ingest key gets 403
    here: give a service that waits for results an all-projects read key."""
    if project_key is None:
        project_key = (
            settings.project_key.get_secret_value() if settings.project_key is not None
            else client_key(settings)
        )
    url, headers = clickhouse_http_endpoint(
        settings.clickhouse_dsn, settings.sql_port, key=project_key
    )
    database = settings.clickhouse_database

    def lookup(run_id: str, project: str) -> RunEnd | None:
        # Imported here: urllib.request costs the SDK's import (http.client, email) otherwise.
        import urllib.error
        import urllib.request

        query = urllib.parse.urlencode({
            "database": database,
            "param_project": project,
            "param_run_id": run_id,
            "query": f"{RUN_END_SQL} FORMAT JSONEachRow",
        })
        request = urllib.request.Request(f"{url}?{query}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace").strip()
            raise ClickHouseError(
                f"cannot look up the end of run {run_id} at {url} (database {database!r}): "
                f"HTTP {exc.code}: {detail[:500]}"
            ) from None
        except OSError as exc:
            raise ClickHouseError(
                f"cannot look up the end of run {run_id}: ClickHouse at {url} does not answer "
                f"({exc}); is the stack running (STEPLOG_SQL_PORT, STEPLOG_CLICKHOUSE_DSN)?"
            ) from None
        lines = body.splitlines()
        if not lines:
            return None
        row = json.loads(lines[0])
        return RunEnd.from_row(run_id, project, row["flow"], row["type"], row["payload"])

    return lookup


def clickhouse_http_endpoint(
    dsn: str, sql_port: int, *, key: str | None = None
) -> tuple[str, dict[str, str]]:
    """The URL of ClickHouse's HTTP interface for a DSN, and the headers that log in: the
    DSN's user and password, else a Steplog key (`key`) as ClickHouse's password header, which
    the stack's SQL endpoint checks (steplog/server/sql_http.py)."""
    parsed = urllib.parse.urlparse(dsn)
    keyed = {"X-ClickHouse-Key": key} if key else {}
    if parsed.scheme not in ("http", "https"):  # the embedded engine: the stack serves it
        return f"http://127.0.0.1:{sql_port}/", keyed
    port = parsed.port or (8443 if parsed.scheme == "https" else 8123)
    headers = {}
    if parsed.username:
        headers["X-ClickHouse-User"] = urllib.parse.unquote(parsed.username)
    if parsed.password:
        headers["X-ClickHouse-Key"] = urllib.parse.unquote(parsed.password)
    else:
        headers.update(keyed)
    return f"{parsed.scheme}://{parsed.hostname}:{port}/", headers
