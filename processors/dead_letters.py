"""Dead letters of the processors' hosts: a message (or a row) that cannot be used goes to the
dead-letter topic with the reason and where it was read (docs/processors.md, step 1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from steplog.errors import InvalidEventError
from steplog.schemas.codec import encode
from steplog.schemas.dead_letters import DeadLetter

from .dispatch import Outbox
from .stateful_consumer import RecordPosition

__all__ = ["RowSource", "add_dead_letter"]

log = logging.getLogger("steplog.processors")


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
) -> None:
    """Add to `outbox` the dead letter of `message` (its `value`, refused for `exc`)."""
    letter = DeadLetter.for_message(
        exc, message.topic, message.partition, message.offset, message.key, value or b""
    )
    key = letter.key_b64.encode() if letter.key_b64 else None
    outbox.add(dlq_topic, key, encode(letter, max_bytes=2**24))
    log.warning(
        "dead letter: %s at %s[%d]@%d", letter.reason, letter.source_topic,
        letter.partition, letter.offset,
    )
