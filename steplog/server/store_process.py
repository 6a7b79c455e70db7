"""The embedded engine's owner: a child process that holds the chDB path, migrates it, writes
the projection rows it is sent, and serves the SQL endpoint.

Why a process of its own: chDB runs inside the process that opens it and holds the GIL for much
of every insert and query (40-140 ms per insert on a loaded 2-core machine, BENCHMARKS.md). In
the processors' process each of those stalled the event loop: the next batch of events, the
signals agent, the timers, and so every resume of a workflow, waited behind an insert or behind
an analyst's query. Here the fold's process only pickles rows into a pipe and waits on it
(without the GIL), while the insert runs on the other core; and a heavy query on the SQL
endpoint no longer slows ingestion. With a ClickHouse server nothing of this is needed: the
processors write to it over the network (`ProjectionWriter` on an HTTP client).

`StoreProcess.write` has `ProjectionWriter.write`'s contract (one insert per table, in order;
raises, never retries), so the processors use either. The child is started with the "spawn"
method (the parent's threads and event loops are not forked), ignores SIGINT (a Ctrl-C reaches
the whole process group; the parent decides when the store stops: after its last write), and
exits when told to or when the parent is gone: killed with it on Linux (PR_SET_PDEATHSIG),
elsewhere when its end of the pipe closes. A dead child is `StoreProcessGoneError`, from
`write` and from `watch`: the processors stop on it rather than retry.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any, Final, NoReturn

from steplog.errors import ClickHouseError, StoreProcessGoneError
from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.projections.flows_table import load_flows
from steplog.projections.migrations import migrate
from steplog.projections.writer import ProjectionWriter, TableRows, WriteResult
from steplog.schemas.flows import FlowDefinition
from steplog.server.child_process import settle_child
from steplog.server.key_ring import KeyRingFollower
from steplog.server.sql_http import serve_sql
from steplog.server.sql_settings import SqlLimits
from steplog.settings import Settings

__all__ = ["StoreProcess"]

log = logging.getLogger("steplog.store")

_POLL_S: Final = 0.5
_STOP_TIMEOUT_S: Final = 30.0
_KEYS_TIMEOUT_S: Final = 30.0


class StoreProcess:
    """The child process of the module docstring, seen from the parent.

    `start()` returns once the child has migrated the database, with the flow definitions the
    database holds; `serve_sql(port, settings)` returns once the child serves SQL on
    127.0.0.1:port (the processors ask for it once their worker runs: the endpoint answering
    means they are up).
    `write()` and `serve_sql()` are blocking and thread-safe (one request on the pipe at a
    time); call them from a thread.
    """

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None  # multiprocessing's SpawnProcess (untyped in typeshed)

    def start(self, timeout: float = 120.0) -> list[FlowDefinition]:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child_end, self.dsn, self.database, os.getpid()),
            name="steplog-store", daemon=True,
        )
        process.start()
        child_end.close()  # so that the parent sees EOF if the child dies
        self._conn, self._process = parent_end, process
        reply = self._receive(timeout)
        if reply[0] != "ready":
            self.stop()
            raise ClickHouseError(f"the store process could not start: {reply[1]}")
        flows: list[FlowDefinition] = reply[1]
        return flows

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def write(self, batch: Mapping[str, TableRows]) -> WriteResult:
        """Insert every table's rows (ProjectionWriter.write, in the child: refused rows are
        isolated there, where the engine's exception is)."""
        result: WriteResult = self._request("write", dict(batch), None)
        return result

    def serve_sql(self, port: int, settings: Settings) -> None:
        """Serve the SQL endpoint on 127.0.0.1:port from the child, until it stops: with
        `settings`' limits (STEPLOG_SQL_MAX_*) and the keys of its keys topic, which the child
        follows itself (a revoked key is refused within about a second)."""
        self._request("serve_sql", (port, settings), 60.0 + _KEYS_TIMEOUT_S)

    def _request(self, request: str, payload: Any, timeout: float | None) -> Any:
        with self._lock:
            conn = self._require_running()
            try:
                conn.send((request, payload))
            except OSError as exc:
                raise StoreProcessGoneError(f"the store process is gone: {exc}") from exc
            reply = self._receive(timeout)
        if reply[0] == "error":
            raise ClickHouseError(reply[1])
        return reply[1]

    def stop(self) -> None:
        """Tell the child to stop and wait for it (killed after a timeout); idempotent."""
        conn, process = self._conn, self._process
        self._conn = None
        if conn is not None:
            try:
                with self._lock:
                    conn.send(("stop", None))
            except OSError:
                pass  # already gone
            conn.close()
        if process is not None:
            process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                log.warning("the store process did not stop in %.0fs: killing it", _STOP_TIMEOUT_S)
                process.kill()
                process.join(10)
            self._process = None

    async def watch(self) -> NoReturn:
        """Wait until the child exits, then raise StoreProcessGoneError: for a task that stops
        the processors when the store dies, even with no write under way to notice it."""
        self._require_running()
        process = self._process
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_reader(process.sentinel, exited.set)  # readable once the child has exited
        try:
            await exited.wait()
        finally:
            loop.remove_reader(process.sentinel)
        raise _gone(process)

    def _require_running(self) -> Connection:
        if self._conn is None:
            raise ClickHouseError("the store process is not running (start() it first)")
        return self._conn

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        """The child's next reply; StoreProcessGoneError if it exits first, ClickHouseError if
        `timeout` passes first."""
        conn = self._require_running()
        waited = 0.0
        while not conn.poll(_POLL_S):
            waited += _POLL_S
            if not self._process.is_alive():
                raise _gone(self._process)
            if timeout is not None and waited >= timeout:
                raise ClickHouseError(f"the store process did not answer within {timeout:.0f}s")
        try:
            reply: tuple[str, Any] = conn.recv()
        except (EOFError, OSError) as exc:
            raise StoreProcessGoneError(
                f"the store process closed its pipe (it exited): {exc}"
            ) from exc
        return reply


def _gone(process: Any) -> StoreProcessGoneError:
    process.join(_POLL_S)  # its exit code, once the kernel has reaped it
    return StoreProcessGoneError(
        f"the store process (pid {process.pid}) exited with code {process.exitcode}; "
        "see its log above"
    )


# --- the child ---------------------------------------------------------------------------------


def _serve(conn: Connection, dsn: str, database: str, parent: int) -> None:
    settle_child(parent)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        client = open_clickhouse(dsn)
        migrate(client, database)
        flows = load_flows(client, database)
        writer = ProjectionWriter(client, database)
    except Exception as exc:  # the parent reports it; nothing else can be done here
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", flows))
    sql: _SqlThread | None = None
    try:
        while True:
            try:
                request, payload = conn.recv()
            except EOFError:
                return  # the parent is gone
            if request == "stop":
                return
            try:
                if request == "serve_sql":
                    sql = sql or _SqlThread(dsn, database, *payload)
                    conn.send(("ok", None))
                else:
                    conn.send(("ok", writer.write(payload)))
            except Exception as exc:  # the writer's errors name the table and the cause
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if sql is not None:
            sql.stop()


class _SqlThread:
    """The SQL endpoint (steplog.server.sql_http) on an event loop of its own thread, with
    the keys of the keys topic (followed on a thread of their own). It answers nothing before
    the ring has every key that existed when it started: until then it would refuse keys."""

    def __init__(self, dsn: str, database: str, port: int, settings: Settings) -> None:
        path = chdb_path(dsn)
        if path is None:
            raise ClickHouseError(f"the SQL endpoint serves the embedded engine, not {dsn!r}")
        self._keys = KeyRingFollower(settings).start()
        try:
            self._keys.wait_caught_up(_KEYS_TIMEOUT_S)
        except BaseException:
            self._keys.stop()
            raise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(
            serve_sql(path, database, self._keys.ring, SqlLimits.from_settings(settings),
                      port=port),
            self._loop,
        ).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._keys.stop()
