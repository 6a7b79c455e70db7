"""One request inside a kept session (sql_sessions): entering it, SET and USE, leaving it.

A kept session is one engine connection for many requests, so what belongs to one request
must be undone when it ends, as ClickHouse gives each request of a session a query context of
its own: its URL settings (their values before it are read from `system.settings` and set
back), its external tables (dropped), its database (each request names its own, else the
session's current one). What a session keeps is what ClickHouse's keeps: `SET` and `USE`
statements, and temporary tables.

A session opens with the endpoint's limits (STEPLOG_SQL_MAX_*), and for a reader with
readonly=2: the engine then takes settings and temporary tables but refuses every other write
(measured on chDB 4.4), while readonly=1 would refuse the temporary tables and the SETs a
session is for. Settings reach it only through the allow-list (URL settings, and each setting
of a SET statement, checked by sql_settings) and never from the query text (the guard refuses
SETTINGS), so a reader still cannot raise a limit.

Failure protocol: if undoing a request's settings or tables fails, the session is marked
broken and closed when released, rather than kept in an unknown state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from steplog.server.sql_auth import Access
from steplog.server.sql_engine import Engine, EngineSession, quoted
from steplog.server.sql_errors import SqlError
from steplog.server.sql_external import drop_external_tables, load_external_tables
from steplog.server.sql_guard import Statement
from steplog.server.sql_request import SqlRequest
from steplog.server.sql_sessions import HeldSession
from steplog.server.sql_settings import SettingsPolicy
from steplog.server.sql_text import split_top_level, unquoted

__all__ = ["enter", "run_set", "run_use"]


def enter(
    held: HeldSession, engine: Engine, policy: SettingsPolicy, request: SqlRequest,
    access: Access, engine_tag: str,
) -> tuple[EngineSession, Callable[[], None]]:
    """The session's engine connection set up for `request` (opened on first use), and the
    call that undoes the request's part when it ends. SqlError when a setting is refused."""
    if "readonly" in request.settings:
        raise _refused("readonly", "a session's access is fixed when it opens")
    requested = policy.checked(request.settings, access)
    requested["log_comment"] = engine_tag  # what Engine.kill finds the query by
    if held.engine is None:
        held.engine = _opened(engine, policy, held.access)
        held.database = request.database
    session = held.engine
    saved = _current(session, requested)

    def leave() -> None:
        try:
            drop_external_tables(session, request.external_tables)
            session.set(saved)
        except SqlError:
            held.broken = True

    try:
        session.use(request.database if request.database_sent or held.database is None
                    else held.database)
        session.set(requested)
        load_external_tables(session, request.external_tables)
    except BaseException:
        leave()
        raise
    return session, leave


def run_set(session: EngineSession, statement: Statement, policy: SettingsPolicy,
            access: Access) -> None:
    """A SET statement (the engine's canonical `SET a = 1, b = 'x'`), each setting checked as
    a URL's would be, then set in the session."""
    assignments: dict[str, str] = {}
    for item in split_top_level(statement.canonical.removeprefix("SET ")):
        name, _, literal = item.partition(" = ")
        if name == "readonly":
            raise _refused(name, "a session's access is fixed when it opens")
        assignments[name.strip("`")] = unquoted(literal.strip())
    session.set(policy.checked(assignments, access))


def run_use(session: EngineSession, held: HeldSession, text: str) -> None:
    """A USE statement: the session's current database from now on."""
    session.query(text, {}, "TabSeparated")
    held.database = session.ask("SELECT currentDatabase()", {}, "TSVRaw").strip()


def _opened(engine: Engine, policy: SettingsPolicy, access: Access) -> EngineSession:
    session = engine.open_session()
    try:
        session.set(policy.limits.engine_settings())
        if access is Access.READ:
            session.set({"readonly": "2"})  # last: the limits are set before it
    except BaseException:
        session.close()
        raise
    return session


def _current(session: EngineSession, names: Iterable[str]) -> dict[str, str]:
    """The session's values of `names` (checked setting names), to set back afterwards."""
    listed = ", ".join(quoted(name) for name in names)
    rows = session.ask(f"SELECT name, value FROM system.settings WHERE name IN ({listed})", {},
                       "TSVRaw")
    return dict(line.split("\t", 1) for line in rows.splitlines() if "\t" in line)


def _refused(name: str, why: str) -> SqlError:
    return SqlError(497, "ACCESS_DENIED", f"setting {name!r} refused in a session: {why}")
