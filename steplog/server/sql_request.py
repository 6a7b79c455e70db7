"""One SQL request read the way ClickHouse's HTTP handler reads it (src/Server/HTTPHandler.cpp).

- The query: the `query` URL parameter, the body, or both, the body then continuing the query
  after a newline (`?query=INSERT INTO t FORMAT TSV` with the rows in the body). The body is
  bytes end to end: only the part that is query text is ever decoded (as UTF-8); rows after an
  INSERT reach the engine as the bytes sent.
- A `multipart/form-data` body (clickhouse-connect's `external_data=`, and its queries whose
  parameters pass 4 KiB): its fields are read as URL parameters are, the `query` fields
  appended to the URL's `query` (as ClickHouse concatenates them: no separator), a `param_*`
  of the URL winning over the form's; each file part (one with a `filename`) is an external
  table (steplog.server.sql_external) described by `NAME_structure`/`NAME_types`/`NAME_format`
  from the URL or the form. The body is then no part of the query.
- An `application/x-www-form-urlencoded` body is query text, as in ClickHouse: it is what
  `curl -d 'SELECT 1'` (and urllib) label any body with.
- `database` (the `X-ClickHouse-Database` header wins, as in ClickHouse): the session's current
  database. `default_format` (the `X-ClickHouse-Format` header wins): the output format when the
  query names none; TabSeparated by default.
- `param_<name>`: the value of a `{name:Type}` placeholder, handed to the engine's own binding
  exactly as sent (the engine parses it as the type's escaped text: `\\N` is NULL, `\\t` a tab).
- Transport parameters (compression, sessions, progress, credentials) steer the exchange and
  are never settings; every other parameter is a setting, which sql_settings checks.

Deviation from ClickHouse: settings in form fields apply (ClickHouse reads settings before it
reads the form, and ignores them there), through the same allow-list as the URL's.
Sessions (`session_id`) and the response's transport (`compress`, `client_protocol_version`)
are read by sql_sessions and sql_output.
"""

from __future__ import annotations

import email.message
import email.utils
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from steplog.server.sql_errors import SqlError
from steplog.server.sql_external import ExternalTable

__all__ = ["DEFAULT_FORMAT", "FormPart", "SqlRequest", "read_multipart"]

DEFAULT_FORMAT: Final = "TabSeparated"
_TRANSPORT_PARAMETERS: Final = frozenset({
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression",
    "http_zlib_compression_level", "wait_end_of_query", "buffer_size",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "client_protocol_version", "quota_key", "role", "stacktrace", "close_session",
})
_PARAM: Final = "param_"


@dataclass(frozen=True)
class SqlRequest:
    url_query: str | None
    """The `query` parameter (with a multipart body: and the form's `query` fields), if any."""
    body: bytes
    """The request body, decompressed (empty for a multipart body: it is read into fields)."""
    database: str
    default_format: str
    params: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    query_id: str | None = None
    external_tables: tuple[ExternalTable, ...] = ()
    """The request's external tables, for its query only (sql_external.load_external_tables)."""
    database_sent: bool = False
    """Whether the request named its database (in a session, else the session's current one)."""

    @classmethod
    def read(
        cls, params: Mapping[str, str], headers: Mapping[str, str], body: bytes,
        default_database: str,
    ) -> SqlRequest:
        content_type = headers.get("Content-Type", "")
        sent_database = headers.get("X-ClickHouse-Database") or params.get("database")
        database = sent_database or default_database
        default_format = (headers.get("X-ClickHouse-Format") or params.get("default_format")
                          or DEFAULT_FORMAT)
        url_fields = list(params.items())
        if not content_type.lower().startswith("multipart/form-data"):
            return cls(params.get("query"), body, database, default_format,
                       _params(url_fields), _settings(url_fields, set()), params.get("query_id"),
                       database_sent=bool(sent_database))
        parts = read_multipart(content_type, body)
        fields = url_fields + [(p.name, _field_text(p)) for p in parts if p.filename is None]
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name, value)  # the URL's before the form's, as Poco's get() does
        tables = tuple(ExternalTable.from_part(p.name, first, p.data)
                       for p in parts if p.filename is not None)
        queries = [value for name, value in fields if name == "query"]
        return cls(
            "".join(queries) if queries else None, b"", database, default_format,
            _params(fields), _settings(fields, {t.name for t in tables}), params.get("query_id"),
            tables, bool(sent_database),
        )

    def text(self) -> str:
        """The whole query text: the URL's query, the body after it on a new line."""
        parts = [self.url_query] if self.url_query is not None else []
        if self.body:
            parts.append(_utf8(self.body, "the query"))
        text = "\n".join(parts)
        if "\x00" in text:
            raise SqlError(62, "SYNTAX_ERROR", "the query contains a NUL character")
        return text

    def body_text(self) -> str:
        return _utf8(self.body, "the query")


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body: a field (no filename) or a file."""

    name: str
    filename: str | None
    data: bytes


def read_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """The parts of a multipart/form-data `body` (RFC 7578), as bytes: a part's content is
    never decoded here. SqlError (ClickHouse's CANNOT_PARSE_INPUT_ASSERTION_FAILED) naming
    what is malformed and where."""
    boundary = _param(content_type, "Content-Type", "boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary", 0)
    delimiter = b"--" + boundary.encode("latin-1")
    at = body.find(delimiter)
    if at < 0:
        raise _malformed("the body holds no boundary", 0)
    parts: list[FormPart] = []
    at += len(delimiter)
    while True:
        if body[at:at + 2] == b"--":
            return parts  # the closing delimiter; an epilogue after it is ignored
        if body[at:at + 2] != b"\r\n":
            raise _malformed("a boundary is not followed by a line break", at)
        headers_end = body.find(b"\r\n\r\n", at + 2)
        if headers_end < 0:
            raise _malformed("a part's headers do not end", at)
        end = body.find(b"\r\n" + delimiter, headers_end + 4)
        if end < 0:
            raise _malformed("a part does not end with a boundary", headers_end)
        parts.append(_part(body[at + 2:headers_end], body[headers_end + 4:end], at))
        at = end + 2 + len(delimiter)


def _part(header_block: bytes, data: bytes, at: int) -> FormPart:
    disposition = ""
    for line in header_block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise _malformed(f"a part's header line {line[:40]!r} has no ':'", at)
        if name.strip().lower() == b"content-disposition":
            disposition = value.decode("utf-8", errors="replace").strip()
    part_name = _param(disposition, "Content-Disposition", "name")
    if part_name is None:
        raise _malformed("a part has no Content-Disposition name", at)
    return FormPart(part_name, _param(disposition, "Content-Disposition", "filename"), data)


def _param(header_value: str, header: str, name: str) -> str | None:
    """A parameter of a header value (`form-data; name="x"`), quoting and RFC 2231 undone."""
    message = email.message.Message()
    message[header] = header_value
    value = message.get_param(name, header=header)
    if value is None or isinstance(value, str):
        return value
    return email.utils.collapse_rfc2231_value(value)


def _field_text(part: FormPart) -> str:
    return _utf8(part.data, f"form field {part.name!r}")


def _params(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`param_<name>` values, the first of a name winning (the URL's, before the form's)."""
    params: dict[str, str] = {}
    for name, value in fields:
        if name.startswith(_PARAM):
            params.setdefault(name[len(_PARAM):], value)
    return params


def _settings(fields: Iterable[tuple[str, str]], tables: set[str]) -> dict[str, str]:
    """Every other named field, but the descriptions of the external tables."""
    described = {f"{table}_{what}" for table in tables for what in ("structure", "types", "format")}
    return {name: value for name, value in fields
            if name and name not in _TRANSPORT_PARAMETERS and not name.startswith(_PARAM)
            and name not in described}


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SqlError(
            62, "SYNTAX_ERROR",
            f"{what} is not UTF-8 (byte {exc.start}); binary data goes in the body of an "
            "INSERT whose statement is in the `query` parameter, or in an external table",
        ) from None


def _malformed(what: str, at: int) -> SqlError:
    return SqlError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                    f"malformed multipart/form-data body: {what} (byte {at})")
