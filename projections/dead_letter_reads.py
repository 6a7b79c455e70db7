"""The dead letters as the dashboard lists them (`GET /v1/dead-letters`): the `dead_letters`
table, which the processors fill from the DLQ topic (processors/dead_letters_host.py), newest
first, a page at a time. Kafka is never read here.

Paging is keyset on the table's key (ts, dlq_partition, dlq_offset), newest first: a page does
not shift when dead letters arrive meanwhile, and no page costs more than its rows. FINAL
collapses a dead letter mirrored twice (a restart before the commit) on the page itself;
`total` is a plain count(), cheap, and may count such a twin until the engine merges it.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from .clickhouse import query_value
from .cursors import decode_cursor, encode_cursor
from .read_models import DeadLetterPage, DeadLetterView

__all__ = ["MAX_PAGE", "PREVIEW_CHARS", "dead_letter_page"]

MAX_PAGE: Final = 500
PREVIEW_CHARS: Final = 2000
_PREVIEW_B64_CHARS: Final = 4 * math.ceil(4 * PREVIEW_CHARS / 3)
"""The base64 of a value's first 4 bytes per preview character (UTF-8's longest): enough for
the preview whatever the text, without fetching values of up to 512 KiB."""

_COLUMNS: Final = (
    "ts, reason, field, source_topic, source_partition, source_offset, key_b64, value_bytes, "
    f"value_truncated, substring(value_b64, 1, {_PREVIEW_B64_CHARS}), dlq_partition, dlq_offset"
)
_TS: Final = "DateTime64(6, 'UTC')"


def dead_letter_page(
    client: Client, database: str, *, cursor: str | None = None, limit: int = 50
) -> DeadLetterPage:
    """Up to `limit` dead letters older than `cursor` (none: the newest), newest first.
    CursorError if `cursor` is not one a page handed out."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit {limit}: expected 1 to {MAX_PAGE}")
    where, parameters = "", dict[str, object](limit=limit + 1)
    if cursor is not None:
        ts, partition, offset = decode_cursor(cursor, datetime, int, int)
        # `ts <=` as well, so that the primary key narrows the range (a tuple comparison alone
        # may not).
        where = (
            f"WHERE ts <= {{ts:{_TS}}} AND (ts, dlq_partition, dlq_offset) < "
            f"({{ts:{_TS}}}, {{partition:UInt32}}, {{offset:UInt64}})"
        )
        parameters.update(ts=ts, partition=partition, offset=offset)
    rows = client.query(
        f"SELECT {_COLUMNS} FROM {database}.dead_letters FINAL {where} "
        "ORDER BY ts DESC, dlq_partition DESC, dlq_offset DESC LIMIT {limit:UInt32}",
        parameters=parameters,
    ).result_rows
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor((_utc(last[0]), int(last[-2]), int(last[-1])))
    total = query_value(client, f"SELECT count() FROM {database}.dead_letters")
    return DeadLetterPage(
        dead_letters=[_view(row) for row in page], next_cursor=next_cursor, total=total
    )


def _view(row: Sequence[Any]) -> DeadLetterView:
    (ts, reason, field, topic, partition, offset, key_b64, value_bytes, truncated,
     value_head, _, _) = row
    return DeadLetterView(
        ts=_utc(ts), reason=reason, field=field, source_topic=topic, partition=partition,
        offset=offset, key=None if key_b64 is None else _key_text(key_b64),
        value_bytes=value_bytes, value_truncated=truncated, preview=_preview(value_head),
    )


def _utc(ts: datetime) -> datetime:
    """The column's time, aware (the client may hand a UTC column's values over naive)."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


# The processors write base64 from the dead letter; a value that is not base64 (a row written
# by hand) is shown as it is stored rather than failing the whole page.


def _key_text(key_b64: str) -> str:
    """The key as UTF-8 text if it is that, else as its base64."""
    try:
        return base64.b64decode(key_b64).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return key_b64


def _preview(value_head: str) -> str:
    try:
        value = base64.b64decode(value_head)
    except binascii.Error:
        return value_head[:PREVIEW_CHARS]
    return value.decode("utf-8", errors="replace")[:PREVIEW_CHARS]
