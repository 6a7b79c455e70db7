"""Dead letters of the processors' hosts: a message (or a row) that cannot be used goes to the
dead-letter topic with the reason and where it was read (docs/processors.md, step 1), and is
counted in `steplog_dead_letters_total{topic, reason}`, the reason a category
(`reason_category`): the dead letter itself has the full text, a label must stay bounded."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from steplog.errors import EventTooLargeError, InvalidEventError
from steplog.metrics import metrics
from steplog.schemas.codec import encode
from steplog.schemas.dead_letters import DeadLetter

from .dispatch import Outbox
from .stateful_consumer import RecordPosition

__all__ = ["REFUSED_ROW", "RowSource", "add_dead_letter", "reason_category"]

log = logging.getLogger("steplog.processors")


REFUSED_ROW = "refused_row"
"""The category of a row ClickHouse refused for good (processors/projection_writes.py)."""


def reason_category(exc: InvalidEventError) -> str:
    """The bounded category of a dead letter's reason: `too_large`, `malformed` (not JSON, not a
    mapping, a tombstone: the whole message), `schema_version` (a major this version cannot
    read), `signature` (the record's signing headers), `run_closed` (an event for a run already
    dropped from the state), `invalid_field` (any other field that failed validation)."""
    if isinstance(exc, EventTooLargeError):
        return "too_large"
    if exc.problem.startswith("run closed"):
        return "run_closed"
    if not exc.field:
        return "malformed"
    if exc.field == "schema_version":
        return "schema_version"
    if exc.field.startswith("headers."):
        return "signature"
    return "invalid_field"


@dataclass(frozen=True)
class RowSource:
    """Where the message behind a refused row was read (`RecordPosition`)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


def add_dead_letter(
    dlq_topic: str,
    outbox: Outbox,
    exc: InvalidEventError,
    message: RecordPosition,
    value: bytes | None,
    *,
    category: str | None = None,
) -> None:
    """Add to `outbox` the dead letter of `message` (its `value`, refused for `exc`), counted
    under `category` (by default `reason_category(exc)`)."""
    letter = DeadLetter.for_message(
        exc, message.topic, message.partition, message.offset, message.key, value or b""
    )
    key = letter.key_b64.encode() if letter.key_b64 else None
    outbox.add(dlq_topic, key, encode(letter, max_bytes=2**24))
    metrics().dead_letters.labels(message.topic, category or reason_category(exc)).inc()
    log.warning(
        "dead letter: %s at %s[%d]@%d", letter.reason, letter.source_topic,
        letter.partition, letter.offset,
    )
