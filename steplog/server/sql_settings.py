"""The settings a SQL request runs with: the endpoint's limits, and what a request may add.

Every query gets the limits (STEPLOG_SQL_MAX_*), set in its own engine session before the
query, so the engine stops a query that passes one with its own error (TIMEOUT_EXCEEDED,
MEMORY_LIMIT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES). A request's own settings (URL parameters that
are not transport parameters) are taken only from an allow-list: output and input formats,
`max_*` lowered (never raised, never 0 = unlimited), and a few that change how a result reads.
Nothing that names a file or a schema on the server, never `readonly=0` for a reader. Settings
inside the query text (`SETTINGS ...`) are the guard's business (steplog.server.sql_guard).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_auth import Access
from steplog.server.sql_errors import SqlError
from steplog.settings import Settings

__all__ = ["SqlLimits", "SettingsPolicy"]

_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_AUTO: Final = re.compile(r"^auto\((\d+)\)$")
# Settings that change how a result is written or computed, nothing else.
_ANYONE: Final = frozenset({
    "session_timezone", "join_use_nulls", "extremes", "prefer_column_name_to_alias",
    "union_default_mode", "joined_subquery_requires_alias", "aggregate_functions_null_for_empty",
    "cast_keep_nullable", "enable_analyzer", "allow_experimental_analyzer", "log_comment",
    "interval_output_format", "limit", "offset", "cancel_http_readonly_queries_on_client_close",
    "date_time_output_format", "date_time_input_format", "output_format_arrow_string_as_string",
    "cast_string_to_dynamic_use_inference",  # clickhouse-connect sends it to writable sessions
    # The native protocol's block codec (clickhouse-go sends it with compress=1); over HTTP the
    # blocks' codec is chosen by the endpoint (sql_blocks.py), so it changes nothing here.
    "network_compression_method",
})
_ANYONE_PREFIXES: Final = ("output_format_", "format_", "input_format_")
_OVERFLOW_MODES: Final = frozenset({"result_overflow_mode", "timeout_overflow_mode",
                                    "read_overflow_mode"})
_WRITERS: Final = frozenset({"mutations_sync", "alter_sync", "lightweight_deletes_sync",
                             "wait_for_async_insert", "async_insert"})
_WRITERS_PREFIXES: Final = ("insert_",)
# A setting whose value is a path or a schema on the server reads or writes files there
# (format_schema, format_template_row, input_format_record_errors_file_path, ...).
_FORBIDDEN_PARTS: Final = ("schema", "template", "file", "path", "dir", "secret")


@dataclass(frozen=True)
class SqlLimits:
    """What every query runs within (the STEPLOG_SQL_MAX_* settings)."""

    max_execution_s: float
    max_memory_mb: int
    max_result_rows: int
    max_result_bytes: int
    max_concurrent_queries: int = 16
    """Queries in flight at once; one more is answered TOO_MANY_SIMULTANEOUS_QUERIES."""
    max_body_bytes: int = 1024 * 1024 * 1024
    """The largest request body, decoded (spooled to disk past 1 MiB: sql_body)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlLimits:
        return cls(settings.sql_max_execution_s, settings.sql_max_memory_mb,
                   settings.sql_max_result_rows, settings.sql_max_result_bytes,
                   settings.sql_max_concurrent_queries, settings.sql_max_body_mb * 1024 * 1024)

    def engine_settings(self) -> dict[str, str]:
        return {
            "max_execution_time": f"{self.max_execution_s:g}",
            "max_memory_usage": str(self.max_memory_mb * 1024 * 1024),
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "timeout_overflow_mode": "throw",
            "result_overflow_mode": "throw",
        }


class SettingsPolicy:
    """Which of a request's settings it may have; `engine_max` is the engine's own value of
    each `max_*` setting (0: unlimited), against which a request may only lower one."""

    def __init__(self, limits: SqlLimits, engine_max: Mapping[str, str]) -> None:
        self.limits = limits
        self._ceilings = {name: _number(value) for name, value in engine_max.items()}
        for name, value in limits.engine_settings().items():
            if name.startswith("max_"):
                self._ceilings[name] = float(value)

    def settings_for(self, requested: Mapping[str, str], access: Access) -> dict[str, str]:
        """Every setting the query's session gets, limits first (a request may lower them);
        SqlError naming the first setting refused."""
        return {**self.limits.engine_settings(), **self.checked(requested, access)}

    def checked(self, requested: Mapping[str, str], access: Access) -> dict[str, str]:
        """The `requested` settings `access` may have (a URL's, or a session's SET); SqlError
        naming the first refused."""
        chosen: dict[str, str] = {}
        for name, value in requested.items():
            if name == "readonly":
                chosen.update(_readonly(value, access))
                continue
            chosen[name] = self._check(name, value, access)
        return chosen

    def _check(self, name: str, value: str, access: Access) -> str:
        """The value `name` gets (a limit asked above the endpoint's is the endpoint's);
        SqlError when the setting is refused."""
        if not _NAME.match(name):
            raise _refused(name, "it is not a setting name")
        lowered = name.lower()
        if any(part in lowered for part in _FORBIDDEN_PARTS):
            raise _refused(name, "it names a file, path or schema on the server")
        if name.startswith("max_"):
            return self._lowered(name, value)
        if name in _OVERFLOW_MODES:
            if value not in ("throw", "break"):
                raise _refused(name, "expected throw or break")
            return value
        if name in _ANYONE or name.startswith(_ANYONE_PREFIXES):
            return value
        if access is Access.WRITE and (name in _WRITERS or name.startswith(_WRITERS_PREFIXES)):
            return value
        raise _refused(name, "it is not one the endpoint lets a request set (formats, "
                             "output options and max_* lowered are)")

    def _lowered(self, name: str, value: str) -> str:
        """A max_* setting as asked when it lowers the endpoint's limit; the endpoint's own when
        it asks more. Clients derive some from their own timeouts (clickhouse-go sends its
        deadline + 5 s as max_execution_time: Grafana's default 60 s query timeout asks 64), so
        a higher ask keeps the endpoint's limit rather than failing the query. Unlimited (0) and
        what is not a number are refused."""
        if name not in self._ceilings:
            raise _refused(name, "no such max_* setting")
        try:
            wanted = float(value)
        except ValueError:
            raise _refused(name, f"expected a number, got {value[:40]!r}") from None
        ceiling = self._ceilings[name]
        if not math.isfinite(wanted) or wanted <= 0:
            raise _refused(name, "a max_* setting may be lowered, not set to 0 (unlimited)")
        if ceiling > 0 and wanted > ceiling:
            return str(int(ceiling)) if ceiling.is_integer() else repr(ceiling)
        return value


def _readonly(value: str, access: Access) -> dict[str, str]:
    """A reader always runs with readonly=1 (the strictest); a writer may ask for 1 or 2."""
    if value not in ("0", "1", "2"):
        raise _refused("readonly", f"expected 0, 1 or 2, got {value[:20]!r}")
    if access is Access.READ:
        if value == "0":
            raise _refused("readonly", "a read key's queries run with readonly=1")
        return {}
    return {} if value == "0" else {"readonly": value}


def _number(value: str) -> float:
    """The number of a setting's value as system.settings shows it ('auto(2)' for max_threads);
    0 (unlimited: a request may set any positive value) when it is not a number."""
    auto = _AUTO.match(value)
    try:
        return float(auto.group(1)) if auto else float(value)
    except ValueError:
        return 0.0


def _refused(name: str, why: str) -> SqlError:
    return SqlError(497, "ACCESS_DENIED", f"setting {name[:128]!r} refused: {why}")
