"""One SQL request run, start to end, in a session of its own (blocking: call from a thread).

The order, and why:
1. The settings: the limits, the request's allowed settings, and readonly=1 for a reader, set
   in the fresh session before anything of the request is parsed, so the guard's own queries
   run read-only too and no setting can come from the query text afterwards.
   External tables are loaded between the settings and readonly=1 (temporary tables need it).
   The session's `log_comment` is the query's engine tag, by which a kill finds it.
2. The guard (steplog.server.sql_guard): the engine's parse, checked for `access`.
3. The run: the query text as sent (never with a FORMAT appended: the output format is the
   engine API's argument), up to its first block when its format streams (sql_stream), its
   progress reported meanwhile when the request asks for it (sql_progress), or,
   for an INSERT with data, the guard's canonical statement fed the data as data (chDB's
   `send_insert`), so rows never reach the SQL parser. `KILL QUERY` is answered here, over the
   endpoint's running queries.

In a kept session (`session_id`, sql_sessions) steps 1 and 3 differ: the session has its
limits from when it opened, the request's own settings are undone when it ends, and SET and
USE statements run (sql_session_request).

Failure protocol: every error before the first block is a SqlError (the engine's, or a
refusal) and the session is closed (a kept one has the request's part undone); a ResultStream
returned holds its session from then on (its caller closes it), so nothing of a request stays
in the engine.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from steplog.server.sql_auth import Access
from steplog.server.sql_engine import Engine, EngineSession, QueryStats, quoted
from steplog.server.sql_errors import SqlError
from steplog.server.sql_external import load_external_tables
from steplog.server.sql_guard import FunctionCatalog, Statement, check, parse_statement
from steplog.server.sql_progress import QueryProgress
from steplog.server.sql_request import SqlRequest
from steplog.server.sql_session_request import enter, run_set, run_use
from steplog.server.sql_sessions import HeldSession
from steplog.server.sql_settings import SettingsPolicy, SqlLimits
from steplog.server.sql_stream import ResultStream, streams
from steplog.server.sql_stream_registry import RunningQueries, RunningQuery

__all__ = ["Answer", "SqlExecutor"]

_FORMAT_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
# chDB's Python-side pseudo-formats (they return Python objects, not bytes).
_NOT_FORMATS: Final = frozenset({"dataframe", "datastore", "arrowtable"})
# Statements whose result can be long: they stream. SHOW, DESCRIBE, EXPLAIN are answered whole.
_STREAMED_KINDS: Final = frozenset({"SelectWithUnionQuery", "SelectQuery", "SelectIntersectExceptQuery"})
# Where an INSERT's first line in the body must end (the engine's own max_query_size).
_MAX_STATEMENT_LINE: Final = 256 * 1024
# The engine's canonical KILL QUERY (formatQuery); KILL MUTATION goes to the engine as sent.
_KILL_QUERY: Final = re.compile(
    r"^KILL QUERY WHERE (?P<condition>.+?)(?: (?P<mode>SYNC|ASYNC|TEST))?(?: FORMAT \w+)?$",
    re.DOTALL)


@dataclass(frozen=True)
class Answer:
    body: bytes
    format: str
    """The format the body is in (the query's FORMAT clause, else the request's default)."""
    timezone: str = ""
    stats: QueryStats = field(default_factory=QueryStats)


class SqlExecutor:
    def __init__(self, engine: Engine, policy: SettingsPolicy, catalog: FunctionCatalog,
                 server_timezone: str = "") -> None:
        self.engine = engine
        self.policy = policy
        self.catalog = catalog
        self.server_timezone = server_timezone

    @classmethod
    def open(cls, engine: Engine, limits: SqlLimits) -> SqlExecutor:
        """An executor with what it needs to know of the engine, read from it once."""
        with engine.session() as session:
            catalog = FunctionCatalog.read(session.ask)
            maxima = session.ask(
                "SELECT name, default FROM system.settings WHERE startsWith(name, 'max_')",
                {}, "TabSeparated",
            )
            timezone = session.ask("SELECT serverTimezone()", {}, "TSVRaw").strip()
        engine_max = dict(line.split("\t", 1) for line in maxima.splitlines() if "\t" in line)
        return cls(engine, SettingsPolicy(limits, engine_max), catalog, timezone)

    def start(
        self, request: SqlRequest, access: Access, query: RunningQuery, running: RunningQueries,
        *, buffered: bool = False, held: HeldSession | None = None,
        progress: QueryProgress | None = None,
    ) -> Answer | ResultStream:
        """Run `request` as `query` up to its first block: a whole Answer, or a ResultStream
        (which then holds the session) for a result in a format that streams, unless
        `buffered` (`wait_end_of_query=1`). In the kept session `held` if given, else in a
        session of its own. `progress` hears of the query until its first block (or its end,
        answered whole). SqlError for anything that fails before the first byte; the
        session is closed (or the request's part of a kept one undone) then."""
        default_format = _output_format(request.default_format)
        timezone = request.settings.get("session_timezone") or self.server_timezone
        if held is None:
            session, finish = self._own_session(request, access, query)
        else:
            session, finish = enter(held, self.engine, self.policy, request, access,
                                    query.engine_tag)
        try:
            if held is not None:  # a SET in the session may have changed it
                timezone = session.ask("SELECT timezone()", {}, "TSVRaw").strip()
            answer = self._answer(session, request, access, query, running, default_format,
                                  buffered, held, finish, timezone, progress)
        except BaseException:
            finish()
            raise
        if isinstance(answer, Answer):
            finish()
        return answer

    def _own_session(
        self, request: SqlRequest, access: Access, query: RunningQuery,
    ) -> tuple[EngineSession, Callable[[], None]]:
        """A session for this request alone, its settings set; closing it is its end."""
        settings = self.policy.settings_for(request.settings, access)
        # Last: once readonly is set, the session takes no other setting.
        readonly = "1" if access is Access.READ else settings.pop("readonly", None)
        settings["log_comment"] = query.engine_tag  # what Engine.kill finds it by
        session = self.engine.open_session()
        try:
            session.use(request.database)
            session.set(settings)
            if request.external_tables:
                # Temporary tables: created before readonly=1, which forbids them.
                load_external_tables(session, request.external_tables)
            if readonly is not None:
                session.set({"readonly": readonly})
        except BaseException:
            session.close()
            raise
        return session, session.close

    def _answer(
        self, session: EngineSession, request: SqlRequest, access: Access, query: RunningQuery,
        running: RunningQueries, default_format: str, buffered: bool, held: HeldSession | None,
        finish: Callable[[], None], timezone: str, progress: QueryProgress | None,
    ) -> Answer | ResultStream:
        if self._insert_body(session, request, access, held is not None):
            return Answer(b"", default_format, timezone)
        text = request.text()
        running.describe(query, text)
        statement = self._guarded(session, text, request, access, held is not None)
        fmt = statement.output_format or default_format
        if _takes_data(statement):
            data_format = statement.output_format or "Values"
            session.insert(statement.without_format(), data_format,
                           [_inline_data(text, data_format)])
            return Answer(b"", default_format, timezone)
        if held is not None and statement.kind == "Set":
            run_set(session, statement, self.policy, access)
            return Answer(b"", default_format, timezone)
        if held is not None and statement.kind == "UseQuery":
            run_use(session, held, text)
            return Answer(b"", default_format, timezone)
        if statement.kind == "KillQueryQuery" and _KILL_QUERY.match(statement.canonical):
            return Answer(self._kill(session, statement, query, running, default_format), fmt,
                          timezone)
        if progress is not None:
            # Only now: the guard's own queries are not the request's progress.
            progress.started(fmt, timezone)
            session.watch(progress.advanced)
        try:
            if statement.kind in _STREAMED_KINDS and streams(fmt) and not buffered:
                return ResultStream(session, text, dict(request.params), fmt, finish, timezone)
            result = session.run(text, request.params, default_format)
        finally:
            if progress is not None:
                session.watch(None)  # a kept session outlives the request
        return Answer(result.data, fmt, timezone, result.stats)

    def _kill(
        self, session: EngineSession, statement: Statement, query: RunningQuery,
        running: RunningQueries, fmt: str,
    ) -> bytes:
        """`KILL QUERY WHERE <condition>` over the endpoint's queries: the condition is the
        engine's to evaluate, over a table of the running queries (query_id, query, user,
        elapsed); each one it selects is killed in the engine by its tag, and the answer lists
        them as ClickHouse's does (kill_status, query_id, user, query). The guard has checked
        the condition with the statement."""
        found = _KILL_QUERY.match(statement.canonical)
        assert found is not None
        others = [q for q in running.snapshot() if q.engine_tag != query.engine_tag]
        rows = " UNION ALL ".join(
            f"SELECT {quoted(q.query_id)} AS query_id, {quoted(q.text)} AS query, "
            f"'default' AS user, {time.monotonic() - q.started:.6f} AS elapsed"
            for q in others
        ) or "SELECT '' AS query_id, '' AS query, '' AS user, 0. AS elapsed LIMIT 0"
        selected = f"SELECT * FROM ({rows}) WHERE {found.group('condition')}"
        ids = set(session.ask(f"SELECT query_id FROM ({selected})", {}, "TSVRaw").splitlines())
        if found.group("mode") != "TEST":
            self.engine.kill([q.engine_tag for q in others if q.query_id in ids])
        status = "'waiting'" if found.group("mode") == "TEST" else "'finished'"
        return session.query(
            f"SELECT {status} AS kill_status, query_id, user, query FROM ({selected})", {}, fmt)

    def _guarded(
        self, session: EngineSession, text: str, request: SqlRequest, access: Access,
        in_session: bool,
    ) -> Statement:
        statement = parse_statement(session.ask, text, request.params)
        check(statement, access, self.catalog, in_session=in_session)
        return statement

    def _insert_body(
        self, session: EngineSession, request: SqlRequest, access: Access, in_session: bool,
    ) -> bool:
        """An INSERT whose rows follow it as bytes (binary formats included), the way ClickHouse
        clients send them: the statement in the `query` parameter and the rows in the body, or
        (clickhouse-connect) the statement on the body's first line and the rows after it. The
        rows go in as data. False when the request is not such an INSERT: it is then parsed
        whole, as text."""
        split = _statement_and_rows(request)
        if split is None or request.body is None:
            return False
        text, rows_start = split
        try:
            statement = parse_statement(session.ask, text, request.params)
        except SqlError:
            return False  # e.g. `?query=SELECT` with the rest in the body: parsed whole later
        if not _takes_data(statement) or (
                request.url_query is None and statement.output_format == "Values"):
            return False  # VALUES rows may start on the first line: the text path finds them
        check(statement, access, self.catalog, in_session=in_session)
        # Streamed from the spool: the rows are never whole in memory.
        session.insert(statement.without_format(), statement.output_format or "Values",
                       request.body.chunks(rows_start))
        return True


def _statement_and_rows(request: SqlRequest) -> tuple[str, int] | None:
    """The INSERT statement of a request whose body holds rows, and where they start in it."""
    if request.body is None:
        return None
    if request.url_query is not None:
        return request.url_query, 0
    head = request.body.read(0, _MAX_STATEMENT_LINE)
    # Only a cheap filter: what runs is decided by the engine's parse of the first line.
    if not head.lstrip()[:6].upper().startswith(b"INSERT"):
        return None
    first, newline, _ = head.partition(b"\n")
    try:
        return (first.decode("utf-8"), len(first) + 1) if newline else None
    except UnicodeDecodeError:
        return None


def _takes_data(statement: Statement) -> bool:
    """An INSERT that reads rows in a format (inline or in the body), not from a SELECT."""
    return statement.kind == "InsertQuery" and statement.output_format is not None


def _inline_data(text: str, fmt: str) -> bytes:
    """The rows after an INSERT's `FORMAT <fmt>` (or `VALUES`) in the text. Where they start
    is found in the text, but what is found is only ever fed to the format's parser as data:
    a wrong guess is a parse error, never SQL run."""
    found = re.search(rf"\bFORMAT\s+{re.escape(fmt)}\b[ \t]*\r?\n?", text, re.IGNORECASE)
    if found is None and fmt == "Values":
        found = re.search(r"\bVALUES\b", text, re.IGNORECASE)
    if found is None:
        raise SqlError(62, "SYNTAX_ERROR", f"cannot find where the INSERT's {fmt} data begins")
    return text[found.end():].encode("utf-8")


def _output_format(name: str) -> str:
    if not _FORMAT_NAME.match(name) or name.lower() in _NOT_FORMATS:
        raise SqlError(73, "UNKNOWN_FORMAT", f"Unknown output format {name[:64]!r}")
    return name
