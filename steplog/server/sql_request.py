"""One SQL request read the way ClickHouse's HTTP handler reads it (src/Server/HTTPHandler.cpp).

- The query: the `query` URL parameter, the body, or both, the body then continuing the query
  after a newline (`?query=INSERT INTO t FORMAT TSV` with the rows in the body).
- `database` (or the `X-ClickHouse-Database` header): the session's current database.
- `default_format` (or the `X-ClickHouse-Format` header): the output format when the query
  names none; TabSeparated by default.
- `param_<name>`: the value of a `{name:Type}` placeholder, handed to the engine's own binding
  as sent (the engine parses it as the type's text).
- Transport parameters (compression, sessions, progress, credentials) steer the exchange and
  are never settings; every other parameter is a setting, which sql_settings checks.

Not yet (docs/sql-endpoint.md): multipart/form-data bodies with external tables (issue 22), and
sessions (`session_id`, issue 19): a request is its own session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from steplog.server.sql_errors import SqlError

__all__ = ["DEFAULT_FORMAT", "SqlRequest"]

DEFAULT_FORMAT: Final = "TabSeparated"
_TRANSPORT_PARAMETERS: Final = frozenset({
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression",
    "wait_end_of_query", "buffer_size", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "client_protocol_version", "quota_key", "role",
})


@dataclass(frozen=True)
class SqlRequest:
    url_query: str | None
    """The `query` parameter, if any."""
    body: bytes
    """The request body, decompressed."""
    database: str
    default_format: str
    params: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    query_id: str | None = None

    @classmethod
    def read(
        cls, params: Mapping[str, str], headers: Mapping[str, str], body: bytes,
        default_database: str,
    ) -> SqlRequest:
        if headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
            raise SqlError(48, "NOT_IMPLEMENTED",
                           "multipart/form-data bodies (external data, form-encoded queries) "
                           "are not supported by Steplog's SQL endpoint yet")
        return cls(
            url_query=params.get("query"),
            body=body,
            database=params.get("database") or headers.get("X-ClickHouse-Database")
            or default_database,
            default_format=params.get("default_format") or headers.get("X-ClickHouse-Format")
            or DEFAULT_FORMAT,
            params={k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")},
            settings={k: v for k, v in params.items()
                      if k not in _TRANSPORT_PARAMETERS and not k.startswith("param_")},
            query_id=params.get("query_id"),
        )

    def text(self) -> str:
        """The whole query text: the URL's query, the body after it on a new line."""
        parts = [self.url_query] if self.url_query is not None else []
        if self.body:
            parts.append(_utf8(self.body))
        text = "\n".join(parts)
        if "\x00" in text:
            raise SqlError(62, "SYNTAX_ERROR", "the query contains a NUL character")
        return text

    def body_text(self) -> str:
        return _utf8(self.body)


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SqlError(
            62, "SYNTAX_ERROR",
            f"the query is not UTF-8 (byte {exc.start}); binary data goes in the body of an "
            "INSERT whose statement is in the `query` parameter",
        ) from None
