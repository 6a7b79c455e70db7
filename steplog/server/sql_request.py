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
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from steplog.server.sql_body import Spool
from steplog.server.sql_errors import SqlError
from steplog.server.sql_external import ExternalTable

__all__ = ["DEFAULT_FORMAT", "FormPart", "FormReader", "SqlRequest"]

DEFAULT_FORMAT: Final = "TabSeparated"
_TRANSPORT_PARAMETERS: Final = frozenset({
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression",
    "http_zlib_compression_level", "wait_end_of_query", "buffer_size",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "client_protocol_version", "quota_key", "role", "stacktrace", "close_session",
})
_PARAM: Final = "param_"
_MAX_PART_HEADERS: Final = 64 * 1024
"""The most a part's header lines may hold (ClickHouse's http_max_field_* are of this order)."""


@dataclass(frozen=True)
class SqlRequest:
    url_query: str | None
    """The `query` parameter (with a multipart body: and the form's `query` fields), if any."""
    body: Spool | None
    """The request body, decoded (None when empty, or multipart: it is read into fields)."""
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
    async def read(
        cls, params: Mapping[str, str], headers: Mapping[str, str],
        body: AsyncIterable[bytes], default_database: str,
    ) -> SqlRequest:
        """The request, its body read from `body` (decoded chunks: sql_body.decoded_body)
        into spools. The caller closes the request once its query no longer needs them;
        if reading fails, nothing is left open."""
        content_type = headers.get("Content-Type", "")
        sent_database = headers.get("X-ClickHouse-Database") or params.get("database")
        database = sent_database or default_database
        default_format = (headers.get("X-ClickHouse-Format") or params.get("default_format")
                          or DEFAULT_FORMAT)
        url_fields = list(params.items())
        if not content_type.lower().startswith("multipart/form-data"):
            spool = await _spooled(body)
            return cls(params.get("query"), spool, database, default_format,
                       _params(url_fields), _settings(url_fields, set()), params.get("query_id"),
                       database_sent=bool(sent_database))
        parts = await read_form(content_type, body)
        try:
            fields = url_fields + [(p.name, p.data.text(f"form field {p.name!r}"))
                                   for p in parts if p.filename is None]
            first: dict[str, str] = {}
            for name, value in fields:
                first.setdefault(name, value)  # the URL's before the form's, as Poco's get() does
            tables = tuple(ExternalTable.from_part(p.name, first, p.data)
                           for p in parts if p.filename is not None)
        except BaseException:
            _close(parts)
            raise
        for part in parts:
            if part.filename is None:
                part.data.close()  # read into `fields`
        queries = [value for name, value in fields if name == "query"]
        return cls(
            "".join(queries) if queries else None, None, database, default_format,
            _params(fields), _settings(fields, {t.name for t in tables}), params.get("query_id"),
            tables, bool(sent_database),
        )

    def text(self) -> str:
        """The whole query text: the URL's query, the body after it on a new line."""
        parts = [self.url_query] if self.url_query is not None else []
        if self.body is not None:
            parts.append(self.body.text("the query"))
        text = "\n".join(parts)
        if "\x00" in text:
            raise SqlError(62, "SYNTAX_ERROR", "the query contains a NUL character")
        return text

    def close(self) -> None:
        """Free the body's and the external tables' spools (their temporary files)."""
        if self.body is not None:
            self.body.close()
        for table in self.external_tables:
            table.data.close()


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body: a field (no filename) or a file."""

    name: str
    filename: str | None
    data: Spool


async def _spooled(body: AsyncIterable[bytes]) -> Spool | None:
    spool = Spool()
    try:
        async for data in body:
            spool.write(data)
    except BaseException:
        spool.close()
        raise
    if spool.size:
        return spool
    spool.close()
    return None


async def read_form(content_type: str, body: AsyncIterable[bytes]) -> list[FormPart]:
    """The parts of a multipart/form-data body (RFC 7578) as it arrives, each spooled as
    bytes (never decoded here); on failure none is left open."""
    boundary = _param(content_type, "Content-Type", "boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary", 0)
    parts: list[FormPart] = []

    def new_part(name: str, filename: str | None) -> Spool:
        parts.append(FormPart(name, filename, Spool()))
        return parts[-1].data

    reader = FormReader(boundary.encode("latin-1"), new_part)
    try:
        async for data in body:
            reader.feed(data)
        reader.end()
    except BaseException:
        _close(parts)
        raise
    return parts


class FormReader:
    """A multipart/form-data body read as it arrives: `feed` each chunk, then `end`. Each
    part's content goes to the spool `new_part(name, filename)` gives, as bytes; only a few
    bytes more than a boundary are ever held. SqlError (ClickHouse's
    CANNOT_PARSE_INPUT_ASSERTION_FAILED) naming what is malformed and at which byte."""

    def __init__(self, boundary: bytes, new_part: Callable[[str, str | None], Spool]) -> None:
        self._delimiter = b"--" + boundary
        self._new_part = new_part
        self._buffer = bytearray()
        self._at = 0  # where _buffer starts in the body
        self._state = self._preamble
        self._part: Spool | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._state():
            pass

    def end(self) -> None:
        self._state()
        if self._state == self._preamble:
            raise _malformed("the body holds no boundary", 0)
        if self._state == self._headers:
            raise _malformed("a part's headers do not end", self._at)
        if self._state == self._content:
            raise _malformed("a part does not end with a boundary", self._at)
        if self._state == self._after_boundary:
            raise _malformed("a boundary is not followed by a line break", self._at)

    # Each state reads what it can of the buffer: True when it moved on (run the next one).

    def _preamble(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            self._consume(max(0, len(self._buffer) - len(self._delimiter) + 1))
            return False
        self._consume(found + len(self._delimiter))
        self._state = self._after_boundary
        return True

    def _after_boundary(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] == b"--":
            self._state = self._epilogue  # the closing delimiter
            return True
        if self._buffer[:2] != b"\r\n":
            raise _malformed("a boundary is not followed by a line break", self._at)
        self._state = self._headers
        return True

    def _headers(self) -> bool:
        # From the line break after the boundary: a part with no header line at all ends here.
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_PART_HEADERS:
                raise _malformed(f"a part's headers pass {_MAX_PART_HEADERS} bytes", self._at)
            return False
        name, filename = _disposition(bytes(self._buffer[2:end]), self._at)
        self._part = self._new_part(name, filename)
        self._consume(end + 4)
        self._state = self._content
        return True

    def _content(self) -> bool:
        assert self._part is not None
        found = self._buffer.find(b"\r\n" + self._delimiter)
        if found < 0:
            # All but what could be the start of the next delimiter.
            keep = len(self._delimiter) + 1
            if len(self._buffer) > keep:
                self._part.write(bytes(self._buffer[:-keep]))
                self._consume(len(self._buffer) - keep)
            return False
        self._part.write(bytes(self._buffer[:found]))
        self._consume(found + 2 + len(self._delimiter))
        self._part = None
        self._state = self._after_boundary
        return True

    def _epilogue(self) -> bool:
        self._consume(len(self._buffer))  # ignored, as after the closing delimiter
        return False

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._at += count


def _close(parts: Iterable[FormPart]) -> None:
    for part in parts:
        part.data.close()


def _disposition(header_block: bytes, at: int) -> tuple[str, str | None]:
    """The part's name and filename, from its Content-Disposition header."""
    disposition = ""
    for line in header_block.split(b"\r\n") if header_block else ():
        name, colon, value = line.partition(b":")
        if not colon:
            raise _malformed(f"a part's header line {line[:40]!r} has no ':'", at)
        if name.strip().lower() == b"content-disposition":
            disposition = value.decode("utf-8", errors="replace").strip()
    part_name = _param(disposition, "Content-Disposition", "name")
    if part_name is None:
        raise _malformed("a part has no Content-Disposition name", at)
    return part_name, _param(disposition, "Content-Disposition", "filename")


def _param(header_value: str, header: str, name: str) -> str | None:
    """A parameter of a header value (`form-data; name="x"`), quoting and RFC 2231 undone."""
    message = email.message.Message()
    message[header] = header_value
    value = message.get_param(name, header=header)
    if value is None or isinstance(value, str):
        return value
    return email.utils.collapse_rfc2231_value(value)


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


def _malformed(what: str, at: int) -> SqlError:
    return SqlError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                    f"malformed multipart/form-data body: {what} (byte {at})")
