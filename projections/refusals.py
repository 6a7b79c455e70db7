"""Which insert failures are about the rows themselves, and so would fail again for ever.

A failed insert is either transient (the engine away, busy, out of memory, a timeout, a table
missing until it is recreated) and worth retrying, or a refusal of the data (a value its column
cannot hold, a constraint violated) that no retry can fix. Telling them apart is what lets the
writer isolate and dead-letter a bad row instead of halting every write behind it.

The rule errs on the side of retrying: only failures known to concern the data count as
refusals, so an unknown error stalls the writes (and the health check says so) rather than
dropping rows that a healthy engine would have taken.
"""

from __future__ import annotations

import re
import struct
from typing import Final

from clickhouse_connect.driver.exceptions import DatabaseError, DataError

__all__ = ["REFUSAL_CODES", "names_missing_table", "refused_column", "refuses_rows"]

REFUSAL_CODES: Final = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407,  # DECIMAL_OVERFLOW
    469,  # VIOLATED_CONSTRAINT
})
"""ClickHouse error codes that mean "these rows cannot be stored" (src/Common/ErrorCodes.cpp)."""

# Raised by clickhouse-connect while it serializes rows into columns, before anything is sent
# (a number out of its column's range, a str where bytes go): the rows, never the engine. Not
# its ProgrammingError: that one is about the statement (an unknown column), which no row fixes.
_CLIENT_SIDE_REFUSALS = (
    DataError, OverflowError, struct.error, TypeError, ValueError, AttributeError, UnicodeError,
)
_CODE = re.compile(r"\bCode: (\d+)\.")
_UNKNOWN_TABLE: Final = 60
_COLUMN = re.compile(r"column `([^`]+)`|Column values: (\w+) =")


def _code(exc: BaseException) -> int | None:
    if not isinstance(exc, DatabaseError) or isinstance(exc, DataError):
        return None
    found = _CODE.search(str(exc))
    return int(found.group(1)) if found else None


def refuses_rows(exc: BaseException) -> bool:
    """True when `exc`, raised by an insert, says the rows cannot be stored as they are."""
    if isinstance(exc, DatabaseError) and not isinstance(exc, DataError):
        return _code(exc) in REFUSAL_CODES
    return isinstance(exc, _CLIENT_SIDE_REFUSALS)


def names_missing_table(exc: BaseException) -> bool:
    """True when `exc` says the table inserted into does not exist (dropped by hand): a
    failure of the engine's, which recreating the table mends."""
    return _code(exc) == _UNKNOWN_TABLE


def refused_column(exc: BaseException) -> str:
    """The column a refusal names ('' when it names none), for the dead letter's `field`."""
    found = _COLUMN.search(str(exc))
    if found is None:
        return ""
    return found.group(1) or found.group(2)
