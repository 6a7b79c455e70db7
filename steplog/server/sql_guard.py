"""What a SQL request may run, decided on the engine's own parse of it, never on the text.

The engine parses the query twice before it runs, in the request's own read-only session:

1. `formatQuery('<the text>')` (the text as a string literal, escaped exactly): the engine's
   canonical form of the statement. It fails on more than one statement (chDB would run them
   all: `SELECT 1; DROP TABLE x` ran both) and on invalid SQL, with the engine's own message.
   The canonical form has no comments and no inline INSERT data, and its newlines are all
   between clauses (a string literal's newline is written `\\n`).
2. `EXPLAIN AST <canonical form>`: the tree, one node a line (`Function file`,
   `TableIdentifier system.numbers`, `Set`, ...). The canonical form, not the raw text: the raw
   text of an INSERT may hide statements after its VALUES, which chDB would run (measured:
   `INSERT INTO t VALUES (1); DROP TABLE u` dropped u), EXPLAIN included.

`check` then refuses, for everyone: a table function other than the few that only make rows
(numbers, zeros, values, ...), wherever it is (FROM, JOIN, `IN numbers(3)`, a view's query,
`INSERT INTO FUNCTION`, `CREATE TABLE AS`, `DESCRIBE`); the functions that read outside
(`file()`, dictionaries, catboost, user-defined ones); a table engine other than the local ones
(File, URL, S3, Kafka, MySQL, ... for writers); a string at the statement's top level, which is
where `INTO OUTFILE` and `FROM INFILE` name a server file (chDB writes INTO OUTFILE even with
readonly=1: measured); `SETTINGS` anywhere in the query (settings go in the URL, where
steplog.server.sql_settings checks them); `system.named_collections` (credentials). Readers may
run only SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN; writers also CREATE (tables and
views), ALTER, INSERT, DROP, TRUNCATE, RENAME, OPTIMIZE, DELETE and KILL QUERY, and never SYSTEM,
SET, USE, BACKUP/RESTORE, ATTACH, dictionaries, functions, named collections or access control.
Names are compared lower-cased (the engine's function names are partly case-insensitive).

In a kept session (`session_id`) anyone may also run SET (each setting through the same
allow-list as a URL's), USE, and CREATE/DROP TEMPORARY TABLE and INSERT.

Defence in depth: a reader's request session has readonly=1, so the engine itself refuses
writes, file and url table functions and setting changes even if this module missed one; a
reader's kept session has readonly=2: writes but to temporary tables are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_auth import Access
from steplog.server.sql_errors import SqlError

__all__ = ["Ask", "FunctionCatalog", "Statement", "check", "parse_statement"]

Ask = Callable[[str, Mapping[str, str], str], str]
"""`ask(sql, params, format)`: one query run in the request's read-only session, its result
as text in that output format."""

# Table functions that only make rows from their arguments.
_TABLE_FUNCTIONS_ALLOWED: Final = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries",
    "generaterandom", "values", "null", "view", "format",
})
# Regular functions that read outside the query: files, dictionaries (their sources), models.
_FUNCTIONS_DENIED: Final = frozenset({"file", "catboostevaluate", "joinget", "joingetornull"})
_FUNCTION_PREFIXES_DENIED: Final = ("dict",)
_ENGINES_ALLOWED: Final = frozenset({
    "mergetree", "replacingmergetree", "summingmergetree", "aggregatingmergetree",
    "collapsingmergetree", "versionedcollapsingmergetree", "coalescingmergetree",
    "memory", "log", "tinylog", "stripelog", "null", "set", "join", "buffer", "merge",
    "atomic",  # a database engine
})
_READ_KINDS: Final = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "Explain", "DescribeQuery",
})
_READ_KIND_PREFIXES: Final = ("Show", "Exists")  # ShowTables, ShowCreateTableQuery, ...
_WRITE_KINDS: Final = frozenset({
    "InsertQuery", "CreateQuery", "AlterQuery", "DropQuery", "TruncateQuery", "Rename",
    "OptimizeQuery", "DeleteQuery", "KillQueryQuery", "UndropQuery", "DetachQuery",
})
_SECRET_TABLES: Final = ("named_collections",)
_FORMAT_LINE: Final = re.compile(r"\s+FORMAT\s+(\w+)\s*$")


@dataclass(frozen=True)
class AstNode:
    depth: int
    label: str

    @property
    def kind(self) -> str:
        return self.label.split(" ", 1)[0]

    @property
    def name(self) -> str:
        """The first word after the kind (a function's or table's name), lower-cased."""
        parts = self.label.split()
        return parts[1].lower() if len(parts) > 1 else ""


@dataclass(frozen=True)
class Statement:
    canonical: str
    """The engine's formatting of the statement (formatQuery)."""
    nodes: tuple[AstNode, ...]

    @property
    def kind(self) -> str:
        """The statement's AST kind: SelectWithUnionQuery, InsertQuery, SYSTEM, ..."""
        return self.nodes[0].kind if self.nodes else ""

    @property
    def output_format(self) -> str | None:
        """The format the statement names (`FORMAT JSON`), None when it names none. For an
        INSERT, the format of its data."""
        found = _FORMAT_LINE.search(self.canonical)
        return found.group(1) if found else None

    def without_format(self) -> str:
        """The canonical statement without its FORMAT clause (an INSERT for send_insert)."""
        return _FORMAT_LINE.sub("", self.canonical)


@dataclass(frozen=True)
class FunctionCatalog:
    """What the engine knows by name, read once from it: every table function, and the
    functions that are not the engine's own (executable and SQL user-defined ones)."""

    table_functions: frozenset[str]
    user_defined: frozenset[str]

    @classmethod
    def read(cls, ask: Ask) -> FunctionCatalog:
        tables = ask("SELECT lower(name) FROM system.table_functions", {}, "TabSeparated")
        users = ask("SELECT lower(name) FROM system.functions WHERE origin != 'System'", {},
                    "TabSeparated")
        return cls(frozenset(tables.split()), frozenset(users.split()))


def parse_statement(ask: Ask, text: str, params: Mapping[str, str]) -> Statement:
    """The engine's parse of `text`; SqlError with the engine's message when it has none."""
    try:
        canonical = ask(f"SELECT formatQuery({_string_literal(text)})", {}, "RawBLOB").strip()
        # TabSeparated escapes a newline in a name as \n: one node a line, whatever the names.
        dump = ask(f"EXPLAIN AST {canonical}", params, "TabSeparated")
    except SqlError as error:
        raise _without_wrapper(error) from None
    nodes = tuple(
        AstNode(len(line) - len(line.lstrip(" ")), line.strip())
        for line in dump.splitlines() if line.strip()
    )
    return Statement(canonical, nodes)


def check(
    statement: Statement, access: Access, catalog: FunctionCatalog, *, in_session: bool = False,
) -> None:
    """SqlError (ACCESS_DENIED) naming the first thing `access` may not run. `in_session`: the
    request runs in a kept session (sql_sessions), where SET (whose settings the caller checks
    and sets itself), USE and temporary tables are allowed to anyone."""
    kind = statement.kind
    allowed = kind in _READ_KINDS or kind.startswith(_READ_KIND_PREFIXES) or (
        access is Access.WRITE and kind in _WRITE_KINDS) or (
        in_session and _session_statement(statement))
    if not allowed:
        who = "a read key" if access is Access.READ else "the endpoint"
        raise _denied(f"{who} may not run {_describe_kind(statement)} statements; "
                      + ("read keys may run SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN"
                         if access is Access.READ else "see docs/sql-endpoint.md"))
    # The dump indents each node one space deeper than its parent: the nodes on the way down
    # to the current one are `path[:depth]`.
    path: list[AstNode] = []
    previous: AstNode | None = None
    for node in statement.nodes:
        del path[node.depth:]
        parent = path[-1] if path else None
        # The engine is a storage definition's first child (PARTITION BY, ORDER BY follow).
        names_engine = (parent is not None and parent.label.startswith("Storage definition")
                        and previous is parent)
        if not (node.depth == 0 and node.kind == "Set"):  # the SET statement, not SETTINGS
            _check_node(node, catalog, names_engine=names_engine)
        path.append(node)
        previous = node


def _session_statement(statement: Statement) -> bool:
    """What a kept session lets anyone run: SET, USE, and CREATE/DROP of TEMPORARY tables and
    INSERT (a reader's session runs with readonly=2, in which the engine refuses every write
    but to temporary tables: measured on chDB 4.4)."""
    kind = statement.kind
    return kind in ("Set", "UseQuery", "InsertQuery") or (
        kind in ("CreateQuery", "DropQuery")
        and statement.canonical.startswith(("CREATE TEMPORARY TABLE", "DROP TEMPORARY TABLE")))


def _check_node(node: AstNode, catalog: FunctionCatalog, *, names_engine: bool) -> None:
    kind, name = node.kind, node.name
    if kind == "Set":
        raise _denied("SETTINGS in the query; pass settings as URL parameters, where the "
                      "endpoint checks them")
    if kind == "Literal" and node.depth == 1 and node.label.startswith("Literal \\'"):
        raise _denied("a file name at the statement's top level (INTO OUTFILE, FROM INFILE "
                      "or COMMENT): the endpoint reads and writes no server files")
    if kind in ("Function", "FunctionWithKeyValueArguments"):
        if names_engine:
            if name not in _ENGINES_ALLOWED:
                raise _denied(f"table engine {name!r}: only local engines (MergeTree family, "
                              "Memory, Log, ...) are allowed")
            return
        if name in catalog.table_functions and name not in _TABLE_FUNCTIONS_ALLOWED:
            allowed = ", ".join(sorted(_TABLE_FUNCTIONS_ALLOWED))
            raise _denied(f"table function {name!r}: only {allowed} are allowed")
        if (name in _FUNCTIONS_DENIED or name.startswith(_FUNCTION_PREFIXES_DENIED)
                or name in catalog.user_defined):
            raise _denied(f"function {name!r}: it reads outside the query (files, "
                          "dictionaries, models or user-defined code)")
    if kind in ("TableIdentifier", "Identifier") and any(t in name for t in _SECRET_TABLES):
        raise _denied(f"table {name!r}: it holds credentials")
    if kind.startswith("Dictionary"):
        raise _denied("dictionaries: their sources reach outside the engine")


def _describe_kind(statement: Statement) -> str:
    return statement.canonical.split(None, 1)[0].upper() if statement.canonical else "empty"


def _string_literal(text: str) -> str:
    """`text` as a ClickHouse string literal: every backslash and quote escaped, so the engine
    reads back exactly `text` (any other byte stands for itself in a literal)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _without_wrapper(error: SqlError) -> SqlError:
    """The engine's error about the user's text, without the formatQuery call around it."""
    cut = error.message.find(": In scope SELECT formatQuery(")
    if cut < 0:
        return error
    message = error.message[:cut].rstrip(". ") + f". ({error.name})"
    return SqlError(error.code, error.name, message)


def _denied(what: str) -> SqlError:
    return SqlError(497, "ACCESS_DENIED", f"Steplog's SQL endpoint refused {what}")
