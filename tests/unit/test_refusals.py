"""Which insert failures are the rows' fault (isolated and dead-lettered) and which are the
engine's (retried): projections/refusals.py."""

from __future__ import annotations

import struct

import pytest
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from steplog.projections.refusals import refused_column, refuses_rows

CONSTRAINT = (
    "Code: 469. DB::Exception: Constraint `c1` for table t.x is violated at row 1. "
    "Expression: (s != 'poison'). Column values: s = 'poison'. (VIOLATED_CONSTRAINT)"
)


@pytest.mark.parametrize("exc", [
    DataError("Unable to create native array for column `attempt`: error"),
    DatabaseError(CONSTRAINT),
    DatabaseError("Code: 321. DB::Exception: Value out of range. (VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE)"),
    struct.error("argument out of range"),
    AttributeError("'float' object has no attribute 'encode'"),
])
def test_failures_of_the_rows_are_refusals(exc: BaseException) -> None:
    assert refuses_rows(exc)


@pytest.mark.parametrize("exc", [
    OperationalError("Error HTTPConnectionPool: Max retries exceeded (connection refused)"),
    DatabaseError("Code: 60. DB::Exception: Table t.nope does not exist. (UNKNOWN_TABLE)"),
    DatabaseError("Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)"),
    DatabaseError("Code: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED)"),
    DatabaseError("something without a code"),
    ProgrammingError("Unrecognized column 'no_such_column' in table flows"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
])
def test_failures_of_the_engine_or_the_statement_are_retried(exc: BaseException) -> None:
    assert not refuses_rows(exc)


def test_the_refused_column_is_read_from_the_message() -> None:
    assert refused_column(DataError("Unable to create native array for column `attempt`")) == (
        "attempt")
    assert refused_column(DatabaseError(CONSTRAINT)) == "s"
    assert refused_column(struct.error("argument out of range")) == ""
