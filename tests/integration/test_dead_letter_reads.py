"""The dashboard's dead letters (projections/dead_letter_reads.py) from the `dead_letters` table
of the real engine: newest first, keyset pages that neither skip nor repeat, a mirrored twin
shown once, keys and previews as text."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from steplog.processors.dead_letters_host import DEAD_LETTER_COLUMNS
from steplog.projections.cursors import CursorError, encode_cursor
from steplog.projections.dead_letter_reads import PREVIEW_CHARS, dead_letter_page
from steplog.settings import Settings

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(clickhouse: Client, settings: Settings) -> str:
    """The test's migrated database (migration 4 made its `dead_letters` table)."""
    return settings.clickhouse_database


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def row(ts: datetime, dlq_offset: int, *, dlq_partition: int = 0, key: bytes | None = b"run-1",
        value: bytes = b'{"bad": true}', truncated: bool = False) -> list[Any]:
    return [ts, f"reason {dlq_offset}", "seq", "steplog.events", 2, 100 + dlq_offset,
            None if key is None else b64(key), b64(value), len(value) + truncated * 1000,
            truncated, dlq_partition, dlq_offset]


def insert(client: Client, database: str, rows: list[list[Any]]) -> None:
    client.insert(f"{database}.dead_letters", rows, column_names=DEAD_LETTER_COLUMNS)


def positions(client: Client, database: str, limit: int) -> list[list[tuple[int, int]]]:
    """Every page's (dlq_partition, dlq_offset)s, following the cursors to the last page."""
    pages, cursor = [], None
    while True:
        page = dead_letter_page(client, database, cursor=cursor, limit=limit)
        pages.append([(letter.partition - 2, letter.offset - 100) for letter in page.dead_letters])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_no_dead_letters_is_an_empty_last_page(clickhouse: Client, database: str) -> None:
    page = dead_letter_page(clickhouse, database)
    assert (page.dead_letters, page.next_cursor, page.total) == ([], None, 0)


def test_pages_go_newest_first_without_gaps_or_repeats(
    clickhouse: Client, database: str
) -> None:
    # Offsets 0-6, a microsecond apart; 3 and 4 in the same one (the DLQ position breaks it).
    times = [T0 + timedelta(microseconds=us) for us in (0, 1, 2, 3, 3, 4, 5)]
    insert(clickhouse, database, [row(ts, offset) for offset, ts in enumerate(times)])
    pages = [[offset for _, offset in page] for page in positions(clickhouse, database, 3)]
    assert pages == [[6, 5, 4], [3, 2, 1], [0]]
    assert dead_letter_page(clickhouse, database, limit=7).next_cursor is None
    assert dead_letter_page(clickhouse, database).total == 7


def test_a_page_does_not_shift_when_newer_dead_letters_arrive(
    clickhouse: Client, database: str
) -> None:
    insert(clickhouse, database, [row(T0 + timedelta(seconds=s), s) for s in range(4)])
    first = dead_letter_page(clickhouse, database, limit=2)
    insert(clickhouse, database, [row(T0 + timedelta(minutes=5), 10)])
    second = dead_letter_page(clickhouse, database, cursor=first.next_cursor, limit=2)
    assert [letter.reason for letter in second.dead_letters] == ["reason 1", "reason 0"]
    assert second.total == 5


def test_a_dead_letter_mirrored_twice_is_listed_once(clickhouse: Client, database: str) -> None:
    insert(clickhouse, database, [row(T0, 0), row(T0, 1)])
    insert(clickhouse, database, [row(T0, 1)])  # a restart before the commit: written again
    assert [letter.offset for letter in dead_letter_page(clickhouse, database).dead_letters] == [
        101, 100
    ]


def test_key_and_preview_are_text(clickhouse: Client, database: str) -> None:
    long_text = "é" * (PREVIEW_CHARS + 500)
    insert(clickhouse, database, [
        row(T0, 0, key=b"run-\xc3\xa9"),
        row(T0 + timedelta(seconds=1), 1, key=b"\xff\xfe", value=b"ab\xffcd"),
        row(T0 + timedelta(seconds=2), 2, key=None, value=long_text.encode(), truncated=True),
    ])
    utf8_key, binary_key, no_key = reversed(dead_letter_page(clickhouse, database).dead_letters)
    assert (utf8_key.key, utf8_key.preview) == ("run-é", '{"bad": true}')
    assert (binary_key.key, binary_key.preview) == (b64(b"\xff\xfe"), "ab\ufffdcd")
    assert no_key.key is None
    assert no_key.preview == long_text[:PREVIEW_CHARS]
    assert (no_key.value_truncated, no_key.value_bytes) == (True, len(long_text.encode()) + 1000)
    assert (utf8_key.ts, utf8_key.source_topic, utf8_key.field) == (T0, "steplog.events", "seq")


def test_a_cursor_that_was_not_handed_out_is_a_cursor_error(
    clickhouse: Client, database: str
) -> None:
    with pytest.raises(CursorError, match="'garbage' is not one this list handed out"):
        dead_letter_page(clickhouse, database, cursor="garbage")
    with pytest.raises(CursorError, match="expected a key of 3 values"):  # a run list cursor
        dead_letter_page(clickhouse, database, cursor=encode_cursor((T0, "run-1")))
    with pytest.raises(ValueError, match="limit 0: expected 1 to 500"):
        dead_letter_page(clickhouse, database, limit=0)
