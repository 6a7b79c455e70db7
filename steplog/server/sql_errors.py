"""The SQL endpoint's errors as ClickHouse's HTTP interface sends them.

A ClickHouse client reads an error from three places: the status (not 200), the
`X-ClickHouse-Exception-Code` header and a body `Code: N. DB::Exception: message. (NAME)`.
Every refusal of the endpoint (authentication, the guard, a setting) and every error of the
engine leaves as one `SqlError`, so clients raise the same way for both.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["SqlError", "engine_error", "exception_block", "status_for"]

_CODE: Final = re.compile(r"Code:\s*(\d+)")
_NAME: Final = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*(?:\(version [^)]*\))?\s*\.?\s*$")

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
_STATUS_BY_CODE: Final[dict[int, int]] = {
    194: 401,  # REQUIRED_PASSWORD
    **dict.fromkeys((192, 193, 516, 512, 497), 403),  # UNKNOWN_USER ... ACCESS_DENIED
    # BAD_ARGUMENTS, CANNOT_COMPILE_REGEXP, CANNOT_PARSE_*, DUPLICATE_COLUMN, ILLEGAL_COLUMN,
    # ..._AST, THERE_IS_NO_COLUMN, SYNTAX_ERROR, INCORRECT_DATA, TYPE_MISMATCH,
    # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    **dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168,
         223, 62, 117, 53, 321),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _DATABASE, _SETTING,
    # _DIRECTION_OF_SORTING, _AGGREGATE_FUNCTION, _FORMAT, _DATABASE_ENGINE, _TYPE_OF_QUERY, _ROLE
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((209, 76, 439), 503),  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, CANNOT_SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    415: 415,  # UNSUPPORTED_MEDIA_TYPE
    # Steplog's own choices, beyond ClickHouse's table (which leaves them at 500):
    516: 401,  # AUTHENTICATION_FAILED: a missing or wrong key is 401, as on every surface
    164: 403,  # READONLY: the engine refusing a write is a refusal, not a server fault
    202: 503,  # TOO_MANY_SIMULTANEOUS_QUERIES: come back later
}
# Codes that are the server's fault. Every other code the engine raises is about the query
# (a type mismatch, a limit passed, a value out of range): 400 here where ClickHouse says 500,
# so that 5xx means "not your request" (clients read the code header, not the status).
# UNSUPPORTED_METHOD, LOGICAL_ERROR, CANNOT_ALLOCATE_MEMORY, STD_EXCEPTION, UNKNOWN_EXCEPTION
_SERVER_FAULTS: Final = frozenset({1, 49, 173, 1000, 1001})
# The most a tagged exception block holds, as ClickHouse's (its clients read no further).
_MAX_EXCEPTION_BLOCK: Final = 16 * 1024


def status_for(code: int) -> int:
    if code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    return 500 if code in _SERVER_FAULTS else 400


class SqlError(Exception):
    """One ClickHouse exception: `code` and `name` as ClickHouse's ErrorCodes.cpp has them."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    @property
    def status(self) -> int:
        return status_for(self.code)

    def body(self) -> str:
        """The text ClickHouse sends: `Code: N. DB::Exception: message. (NAME)`."""
        if self.message.startswith("Code:"):
            return self.message.rstrip() + "\n"
        return f"Code: {self.code}. DB::Exception: {self.message.rstrip('.')}. ({self.name})\n"


def engine_error(exc: BaseException) -> SqlError:
    """The engine's exception as it reported it ("... Code: N. DB::Exception: ... (NAME)")."""
    text = str(exc).strip()
    found = _CODE.search(text)
    if found is None:
        return SqlError(1000, "STD_EXCEPTION", text or type(exc).__name__)
    message = text[found.start():]
    named = _NAME.search(message)
    return SqlError(int(found.group(1)), named.group(1) if named else "UNKNOWN", message)


def exception_block(error: SqlError, tag: str) -> bytes:
    """`error` written into a response whose status and first rows have gone, as ClickHouse
    25.11+ does (WriteBufferFromHTTPServerResponse; the HTTP interface docs):
    `\\r\\n__exception__\\r\\n<tag>\\r\\n<message>\\n<bytes in message> <tag>\\r\\n__exception__\\r\\n`,
    where `tag` is the response's `X-ClickHouse-Exception-Tag` (16 random characters, so that
    no row can forge the block). clickhouse-connect scans every chunk for
    `__exception__\\r\\n<tag>` and raises instead of returning the rows before it."""
    head = b"\r\n__exception__\r\n" + tag.encode("ascii") + b"\r\n"
    tail_room = len(tag) + 32  # "\n<length> <tag>\r\n__exception__\r\n"
    message = error.body().rstrip("\n").encode("utf-8")
    message = message[:_MAX_EXCEPTION_BLOCK - len(head) - tail_room]
    return head + message + b"\n%d %s\r\n__exception__\r\n" % (len(message), tag.encode("ascii"))
