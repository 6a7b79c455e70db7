"""One SQL request run, start to end, in a session of its own (blocking: call from a thread).

The order, and why:
1. The settings: the limits, the request's allowed settings, and readonly=1 for a reader, set
   in the fresh session before anything of the request is parsed, so the guard's own queries
   run read-only too and no setting can come from the query text afterwards.
2. The guard (steplog.server.sql_guard): the engine's parse, checked for `access`.
3. The run: the query text as sent (never with a FORMAT appended: the output format is the
   engine API's argument), or, for an INSERT with data, the guard's canonical statement fed
   the data as data (chDB's `send_insert`), so rows never reach the SQL parser.

Failure protocol: every error is a SqlError (the engine's, or a refusal); the session is
closed whatever happens, so nothing of a failed request stays in the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_auth import Access
from steplog.server.sql_engine import Engine, EngineSession
from steplog.server.sql_errors import SqlError
from steplog.server.sql_guard import FunctionCatalog, Statement, check, parse_statement
from steplog.server.sql_request import SqlRequest
from steplog.server.sql_settings import SettingsPolicy, SqlLimits

__all__ = ["Answer", "SqlExecutor"]

_FORMAT_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
# chDB's Python-side pseudo-formats (they return Python objects, not bytes).
_NOT_FORMATS: Final = frozenset({"dataframe", "datastore", "arrowtable"})


@dataclass(frozen=True)
class Answer:
    body: bytes
    format: str
    """The format the body is in (the query's FORMAT clause, else the request's default)."""


class SqlExecutor:
    def __init__(self, engine: Engine, policy: SettingsPolicy, catalog: FunctionCatalog) -> None:
        self.engine = engine
        self.policy = policy
        self.catalog = catalog

    @classmethod
    def open(cls, engine: Engine, limits: SqlLimits) -> SqlExecutor:
        """An executor with what it needs to know of the engine, read from it once."""
        with engine.session() as session:
            catalog = FunctionCatalog.read(session.ask)
            maxima = session.ask(
                "SELECT name, default FROM system.settings WHERE startsWith(name, 'max_')",
                {}, "TabSeparated",
            )
        engine_max = dict(line.split("\t", 1) for line in maxima.splitlines() if "\t" in line)
        return cls(engine, SettingsPolicy(limits, engine_max), catalog)

    def run(self, request: SqlRequest, access: Access) -> Answer:
        default_format = _output_format(request.default_format)
        settings = self.policy.settings_for(request.settings, access)
        # Last: once readonly is set, the session takes no other setting.
        readonly = "1" if access is Access.READ else settings.pop("readonly", None)
        if readonly is not None:
            settings["readonly"] = readonly
        with self.engine.session() as session:
            session.use(request.database)
            session.set(settings)
            if self._insert_body(session, request, access):
                return Answer(b"", default_format)
            text = request.text()
            statement = self._guarded(session, text, request, access)
            if _takes_data(statement):
                fmt = statement.output_format or "Values"
                session.insert(statement.without_format(), fmt, _inline_data(text, fmt))
                return Answer(b"", default_format)
            body = session.query(text, request.params, default_format)
            return Answer(body, statement.output_format or default_format)

    def _guarded(
        self, session: EngineSession, text: str, request: SqlRequest, access: Access
    ) -> Statement:
        statement = parse_statement(session.ask, text, request.params)
        check(statement, access, self.catalog)
        return statement

    def _insert_body(self, session: EngineSession, request: SqlRequest, access: Access) -> bool:
        """An INSERT whose rows follow it as bytes (binary formats included), the way ClickHouse
        clients send them: the statement in the `query` parameter and the rows in the body, or
        (clickhouse-connect) the statement on the body's first line and the rows after it. The
        rows go in as data. False when the request is not such an INSERT: it is then parsed
        whole, as text."""
        split = _statement_and_rows(request)
        if split is None:
            return False
        text, rows = split
        try:
            statement = parse_statement(session.ask, text, request.params)
        except SqlError:
            return False  # e.g. `?query=SELECT` with the rest in the body: parsed whole later
        if not _takes_data(statement) or (
                request.url_query is None and statement.output_format == "Values"):
            return False  # VALUES rows may start on the first line: the text path finds them
        check(statement, access, self.catalog)
        session.insert(statement.without_format(), statement.output_format or "Values", rows)
        return True


def _statement_and_rows(request: SqlRequest) -> tuple[str, bytes] | None:
    if not request.body:
        return None
    if request.url_query is not None:
        return request.url_query, request.body
    # Only a cheap filter: what runs is decided by the engine's parse of the first line.
    if not request.body.lstrip()[:6].upper().startswith(b"INSERT"):
        return None
    first, newline, rows = request.body.partition(b"\n")
    try:
        return (first.decode("utf-8"), rows) if newline else None
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
