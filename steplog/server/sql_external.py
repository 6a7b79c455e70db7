"""External data: tables a request sends along with its query, visible to that query only.

ClickHouse's "external data for query processing" (src/Core/ExternalTable.cpp): each file part
of a multipart/form-data request is a table named by the part's name, its columns from
`NAME_structure` (`id UInt32, name String`) or `NAME_types` (`UInt32, String`: columns `_1`,
`_2`, ...), its rows in `NAME_format` (TabSeparated by default). Here each one becomes a
TEMPORARY table of the request's own engine session (sql_engine.EngineSession), so it lives and
dies with the request, and no other request sees it.

A table is held on disk, not in memory: its part was spooled as it arrived (sql_body.Spool),
and it is fed to the engine CHUNK_BYTES at a time into a table of engine Log (columns in
compressed files, appended to, no merges), inserted in blocks of at most `_INSERT_BLOCK`
(measured: a 1 GiB CSV grew the process by about 30 MiB). Log stores every type but JSON,
Dynamic and Variant; a table with one of those is a MergeTree (ORDER BY tuple()), which
stores them, on disk too. ClickHouse holds external tables in memory (engine Memory) and
bounds them by http_max_multipart_form_data_size. The engine removes a temporary table's
files when its session closes, and at start after a crash (measured).

Nothing a client sends reaches the engine as SQL: the structure is split here into names and
types, each type is replaced by the engine's own canonical name of it (a type the engine does
not know, or text that is not one whole type, is refused naming the table), names are quoted,
and the rows go in through chDB's `send_insert` as data in their format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_body import Spool
from steplog.server.sql_engine import EngineSession
from steplog.server.sql_errors import SqlError

__all__ = ["ExternalTable", "drop_external_tables", "load_external_tables", "parse_structure",
           "parse_types"]

DEFAULT_FORMAT: Final = "TabSeparated"
_FORMAT_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_BARE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_NAME: Final = 256
_QUOTES: Final = "'\"`"
_ILLEGAL_COLUMN: Final = 44  # what Log answers for a JSON, Dynamic or Variant column
# Blocks of a few MiB at most: the engine's defaults squash up to 1M rows or 256 MiB.
_INSERT_BLOCK: Final = ("max_insert_block_size = 262144, min_insert_block_size_rows = 262144, "
                        "min_insert_block_size_bytes = 16777216, "
                        "max_insert_block_size_bytes = 16777216")
_ENGINE_MESSAGE: Final = re.compile(r"DB::Exception:\s*(.*?)(?:\s*\([A-Z][A-Z0-9_]+\))?"
                                    r"(?:\s*\(version [^)]*\))?\s*\.?\s*$", re.DOTALL)


@dataclass(frozen=True)
class ExternalTable:
    """One external table as the request sent it; `structure` holds (column, type) pairs as
    written (the types are checked by the engine when the table is loaded). `data` is the
    request's to close (SqlRequest.close)."""

    name: str
    structure: tuple[tuple[str, str], ...]
    format: str
    data: Spool

    @classmethod
    def from_part(cls, name: str, fields: Mapping[str, str], data: Spool) -> ExternalTable:
        """The table of a file part named `name`, described by the request's fields (URL and
        form) `name_structure` or `name_types`, and `name_format`."""
        _check_name(name, "external table name")
        fmt = fields.get(f"{name}_format") or DEFAULT_FORMAT
        if not _FORMAT_NAME.match(fmt):
            raise SqlError(73, "UNKNOWN_FORMAT",
                           f"Unknown input format {fmt[:64]!r} for external table {name!r}")
        if f"{name}_structure" in fields:
            structure = parse_structure(name, fields[f"{name}_structure"])
        elif f"{name}_types" in fields:
            structure = parse_types(name, fields[f"{name}_types"])
        else:
            raise SqlError(36, "BAD_ARGUMENTS",
                           f"Neither structure nor types have been provided for external table "
                           f"{name!r}. Use fields {name}_structure or {name}_types to do so")
        return cls(name, structure, fmt, data)


def parse_structure(table: str, text: str) -> tuple[tuple[str, str], ...]:
    """`a UInt8, \\`b c\\` Array(String)` as [(a, UInt8), (b c, Array(String))]."""
    columns = []
    for item in _top_level_items(table, text):
        name, type_text = _column(table, item)
        columns.append((name, type_text))
    return tuple(columns)


def parse_types(table: str, text: str) -> tuple[tuple[str, str], ...]:
    """`UInt8, Array(String)` as [(_1, UInt8), (_2, Array(String))], as ClickHouse names them."""
    return tuple((f"_{i}", item) for i, item in enumerate(_top_level_items(table, text), 1))


def load_external_tables(session: EngineSession, tables: Sequence[ExternalTable]) -> None:
    """Create and fill each table as a TEMPORARY table of `session`. Call it after the request's
    settings (its input_format_* settings apply to the rows) and before readonly=1 (which
    refuses CREATE). SqlError naming the table when its structure or rows are refused."""
    for table in tables:
        types = _canonical_types(session, table)
        columns = ", ".join(f"{_identifier(name)} {type_name}"
                            for (name, _), type_name in zip(table.structure, types))
        create = f"CREATE TEMPORARY TABLE {_identifier(table.name)} ({columns}) ENGINE = "
        try:
            try:
                session.query(create + "Log", {}, "TabSeparated")
            except SqlError as error:
                if error.code != _ILLEGAL_COLUMN:
                    raise
                session.query(create + "MergeTree ORDER BY tuple()", {}, "TabSeparated")
            # An empty part is an empty table, in every format (a Parquet reader refuses 0 bytes).
            if table.data.size:
                session.insert(f"INSERT INTO {_identifier(table.name)} SETTINGS {_INSERT_BLOCK}",
                               table.format, table.data.chunks())
        except SqlError as error:
            raise _naming(table.name, error) from None


def drop_external_tables(session: EngineSession, tables: Sequence[ExternalTable]) -> None:
    """Drop the tables `load_external_tables` made: in a kept session (sql_sessions) they
    would outlive the query they came with."""
    for table in tables:
        session.query(f"DROP TEMPORARY TABLE IF EXISTS {_identifier(table.name)}", {},
                      "TabSeparated")


def _canonical_types(session: EngineSession, table: ExternalTable) -> list[str]:
    """The engine's own name of each type (`int` -> `Int32`): what the CREATE is written with,
    so that the type text a client sent is never part of a statement. A text that is not
    exactly one type fails here (the engine parses it whole), with the engine's error."""
    calls = ", ".join(f"toTypeName(defaultValueOfTypeName({_literal(type_text)}))"
                      for _, type_text in table.structure)
    try:
        row = json.loads(session.query(f"SELECT [{calls}]", {}, "JSONCompactEachRow"))
    except SqlError as error:
        raise _naming(table.name, error) from None
    names: list[str] = row[0]
    return names


def _top_level_items(table: str, text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes, each item stripped."""
    items: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char in _QUOTES:
            i = _after_quoted(table, text, i)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise _bad_structure(table, f"unbalanced ')' at {i}")
        elif char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    if depth:
        raise _bad_structure(table, "unbalanced '('")
    items.append(text[start:].strip())
    if items == [""]:
        raise _bad_structure(table, "no columns")
    for position, item in enumerate(items, 1):
        if not item:
            raise _bad_structure(table, f"column {position} is empty")
    return items


def _after_quoted(table: str, text: str, start: int) -> int:
    """The index after the quoted string that starts at `start` (backslash escapes, and the
    quote doubled, as ClickHouse's lexer reads them)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == quote:
            if text[i + 1:i + 2] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise _bad_structure(table, f"unterminated {quote} quote at {start}")


def _column(table: str, item: str) -> tuple[str, str]:
    """`name Type` with the name bare, or in backquotes or double quotes."""
    if item[0] in "`\"":
        end = _after_quoted(table, item, 0)
        name = _unquoted(item[:end])
    else:
        end = len(item.split(None, 1)[0])
        name = item[:end]
        if not _BARE_NAME.match(name):
            raise _bad_structure(table, f"{name[:64]!r} is not a column name (quote it in `)")
    type_text = item[end:].strip()
    if not type_text:
        raise _bad_structure(table, f"column {name[:64]!r} has no type")
    _check_name(name, f"column name in external table {table!r}")
    return name, type_text


def _unquoted(quoted: str) -> str:
    quote, body = quoted[0], quoted[1:-1]
    body = body.replace(quote * 2, quote)
    return re.sub(r"\\(.)", r"\1", body)


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise SqlError(36, "BAD_ARGUMENTS",
                       f"invalid {what} {name[:64]!r}: 1 to {_MAX_NAME} printable characters")


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bad_structure(table: str, why: str) -> SqlError:
    return SqlError(36, "BAD_ARGUMENTS",
                    f"Error while parsing the structure of external table {table!r}: {why}")


def _naming(table: str, error: SqlError) -> SqlError:
    """The engine's error, its message prefixed with the external table it was about."""
    found = _ENGINE_MESSAGE.search(error.message)
    message = found.group(1) if found else error.message
    # The scope is the endpoint's own probe of the types, not anything the client wrote.
    message = message.split(" In scope ")[0].rstrip(":. ")
    return SqlError(error.code, error.name, f"external table {table!r}: {message}")
