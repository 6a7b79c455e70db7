"""Where the web service reads runs from: the ClickHouse projections, never Kafka.

With a ClickHouse server DSN it reads the server. With the embedded engine it reads through the
stack's SQL endpoint (127.0.0.1:STEPLOG_SQL_PORT), never the chDB files themselves: a web
service that opened them would lock the stack's store process out of its own data.

Each read runs in a worker thread (clickhouse-connect is synchronous) on that thread's own
client, so reads do not queue behind one another here. A read that cannot reach ClickHouse is
`Unavailable` (503 with what did not answer); the client is dropped and the next read connects
again, so the dashboard recovers by itself once ClickHouse is back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Final, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from steplog.credentials import client_key
from steplog.errors import ClickHouseError
from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.server.web_errors import Unavailable
from steplog.settings import Settings

__all__ = ["ReadStore"]

T = TypeVar("T")
Read = Callable[[Client, str], T]
"""A read: given a client and the database, the answer."""

_CONNECT_TIMEOUT_S: Final = 3
_QUERY_TIMEOUT_S: Final = 30


class ReadStore:
    def __init__(self, settings: Settings, *, sql_port: int | None = None) -> None:
        self.database = settings.clickhouse_database
        self._dsn = settings.clickhouse_dsn
        self._sql_port = sql_port or settings.sql_port
        self._embedded = chdb_path(settings.clickhouse_dsn) is not None
        # The web service reads every project's rows (it filters by the asking key's projects
        # itself), so it logs in to the SQL endpoint with Steplog's own client key.
        self._key = client_key(settings)
        self._local = threading.local()

    @property
    def where(self) -> str:
        """Where reads go, for messages."""
        if self._embedded:
            return f"the stack's SQL endpoint on 127.0.0.1:{self._sql_port}"
        return f"ClickHouse at {self._dsn}"

    async def read(self, read: Read[T]) -> T:
        """`read` run on a worker thread's client; Unavailable when ClickHouse does not answer.
        Other errors (a query Steplog got wrong) propagate as they are: they are bugs, not
        outages, and the web service answers them 500."""
        return await asyncio.to_thread(self._read, read)

    def _read(self, read: Read[T]) -> T:
        client = self._client()
        try:
            return read(client, self.database)
        except (OperationalError, ConnectionError) as exc:
            self._local.client = None
            raise Unavailable(f"cannot read runs: {self.where} does not answer ({exc})") from None
        except DatabaseError as exc:
            if _is_missing_database(exc):
                raise Unavailable(
                    f"cannot read runs: database {self.database!r} has no Steplog tables at "
                    f"{self.where} yet (run `steplog migrate`)"
                ) from None
            raise

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        try:
            if self._embedded:
                client = clickhouse_connect.get_client(
                    host="127.0.0.1", port=self._sql_port, compress=False,
                    password=self._key or "",
                    connect_timeout=_CONNECT_TIMEOUT_S, send_receive_timeout=_QUERY_TIMEOUT_S,
                )
            else:
                client = open_clickhouse(self._dsn)
        except (ClickHouseError, OperationalError, ConnectionError, DatabaseError) as exc:
            raise Unavailable(f"cannot read runs: {self.where} does not answer ({exc})") from None
        self._local.client = client
        return client


def _is_missing_database(exc: DatabaseError) -> bool:
    text = str(exc)
    return "UNKNOWN_DATABASE" in text or "UNKNOWN_TABLE" in text
