"""Kept SQL sessions: who holds one, when it is locked, missing or expired."""

from __future__ import annotations

import pytest

from steplog.server.sql_auth import Access
from steplog.server.sql_errors import SqlError
from steplog.server.sql_sessions import SessionSpec, SqlSessions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def code_of(call: object) -> int:
    assert callable(call)
    with pytest.raises(SqlError) as refused:
        call()
    return refused.value.code


def test_a_session_is_held_by_one_request_at_a_time() -> None:
    sessions = SqlSessions()
    spec = SessionSpec("s")
    held = sessions.acquire("key1", spec, Access.READ)
    assert code_of(lambda: sessions.acquire("key1", spec, Access.READ)) == 373
    sessions.release(held)
    assert sessions.acquire("key1", spec, Access.READ) is held


def test_the_same_id_with_another_key_is_another_session() -> None:
    sessions = SqlSessions()
    mine = sessions.acquire("key1", SessionSpec("s"), Access.READ)
    theirs = sessions.acquire("key2", SessionSpec("s"), Access.WRITE)
    assert theirs is not mine


def test_a_session_expires_its_timeout_after_its_last_request() -> None:
    clock = Clock()
    sessions = SqlSessions(clock=clock)
    held = sessions.acquire("key1", SessionSpec("s", timeout_s=5), Access.READ)
    clock.now += 60  # a long request does not expire while it runs
    sessions.release(held)
    clock.now += 4.9
    check = SessionSpec("s", timeout_s=5, check=True)
    again = sessions.acquire("key1", check, Access.READ)
    assert again is held
    sessions.release(again)
    clock.now += 5
    assert code_of(lambda: sessions.acquire("key1", check, Access.READ)) == 372


def test_close_session_and_the_cap() -> None:
    sessions = SqlSessions(limit=1)
    held = sessions.acquire("key1", SessionSpec("a"), Access.READ)
    assert code_of(lambda: sessions.acquire("key1", SessionSpec("b"), Access.READ)) == 202
    sessions.release(held, close=True)
    assert sessions.acquire("key1", SessionSpec("b"), Access.READ) is not held


@pytest.mark.parametrize("params, expected", [
    ({}, None),
    ({"session_id": ""}, None),
    ({"session_id": "x"}, SessionSpec("x", 60)),
    ({"session_id": "x", "session_timeout": "5", "session_check": "1", "close_session": "true"},
     SessionSpec("x", 5, True, True)),
])
def test_a_request_names_its_session(params: dict[str, str], expected: SessionSpec | None) -> None:
    assert SessionSpec.read(params) == expected


@pytest.mark.parametrize("timeout", ["-1", "1.5", "3601", "soon"])
def test_a_bad_timeout_is_refused(timeout: str) -> None:
    params = {"session_id": "x", "session_timeout": timeout}
    assert code_of(lambda: SessionSpec.read(params)) == 374
