"""Opening ClickHouse through clickhouse-connect: the embedded engine (chDB) or a server.

`chdb:///path` runs the ClickHouse engine inside this process; `http(s)://host:port` talks to a
server. Either way callers get a clickhouse-connect client and write the same SQL.

chDB keeps its files at one path and cannot share them between processes: a second process
fails deep in the engine with "Error initializing EmbeddedServer" and no hint of who holds the
path. So before opening a path we take an exclusive lock on a file inside it and record our pid
and command line there; a second process gets a `ClickHousePathLockedError` naming the owner.
The lock is held for the life of the process (the engine itself stays open until exit).
"""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError, ClickHousePathLockedError

OWNER_FILE = "steplog.owner"


@dataclass(frozen=True)
class ChdbPathOwner:
    """Who holds a chDB path: read from the owner file of a held lock."""

    pid: int | None
    command: str

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "another process"
        return f"{who} ({self.command})" if self.command else who


# Locks this process holds, by resolved path: kept referenced so the descriptors stay open
# (closing one would release the flock while the engine still uses the files).
_held_locks: dict[Path, IO[str]] = {}


def chdb_path(dsn: str) -> Path | None:
    """The filesystem path of a chdb:// DSN, or None for a server DSN."""
    parsed = urlparse(dsn)
    if parsed.scheme != "chdb":
        return None
    path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
    if not path or not path.startswith("/"):
        raise ClickHouseError(
            f"STEPLOG_CLICKHOUSE_DSN={dsn!r}: a chdb DSN needs an absolute path, "
            "e.g. chdb:///var/lib/steplog/clickhouse"
        )
    return Path(path)


def lock_chdb_path(path: Path) -> None:
    """Take this process's exclusive claim on a chDB path, or raise naming the holder."""
    path = path.resolve()
    if path in _held_locks:
        return
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / OWNER_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(handle)
        handle.close()
        raise ClickHousePathLockedError(
            f"the embedded ClickHouse data at {path} is in use by {owner.describe()}; "
            "chDB lets one process own a path at a time. Query it through that process "
            "(`steplog sql` against the running stack), stop it, or set "
            "STEPLOG_CLICKHOUSE_DSN to another chdb:///path or to a ClickHouse server URL"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n{' '.join(sys.argv)}\n")
    handle.flush()
    _held_locks[path] = handle


def _read_owner(handle: IO[str]) -> ChdbPathOwner:
    handle.seek(0)
    lines = handle.read().splitlines()
    pid = int(lines[0]) if lines and lines[0].isdigit() else None
    return ChdbPathOwner(pid=pid, command=lines[1] if len(lines) > 1 else "")


def open_clickhouse(dsn: str, database: str | None = None) -> Client:
    """A clickhouse-connect client for the DSN.

    `database` becomes the default for unqualified table names; it must exist already (run the
    migrations first). Steplog's own code always qualifies names and passes none.

    Raises ClickHouseError (or ClickHousePathLockedError) with the DSN and the cause.
    """
    path = chdb_path(dsn)
    if path is not None:
        lock_chdb_path(path)
    try:
        client = clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:  # clickhouse-connect raises several unrelated types here
        raise ClickHouseError(f"cannot open ClickHouse at {dsn!r}: {exc}") from exc
    if database:
        client.database = database
    return client


def query_value(client: Client, sql: str, parameters: dict[str, object] | None = None) -> object:
    """The single value a query returns (the first column of its first row)."""
    rows = client.query(sql, parameters=parameters).result_rows
    if not rows:
        raise ClickHouseError(f"expected one row from: {sql}")
    return rows[0][0]
