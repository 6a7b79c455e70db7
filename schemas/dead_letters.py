"""Dead letters: messages a processor could not use, kept with the reason on the DLQ topic.

A malformed message must never stop a processor (it would be re-read forever after a restart),
so the processor writes a dead letter and commits past it. The original bytes are kept, base64
encoded because they may not be UTF-8, so an operator can inspect, fix and re-publish them.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from .errors import InvalidEventError

from .base import SCHEMA_VERSION, SchemaVersion, Timestamp, WireModel
from .limits import KafkaOffset, KafkaPartition

MAX_DEAD_LETTER_VALUE_BYTES = 512 * 1024
"""Original bytes kept per dead letter. Base64 makes 512 KiB about 683 KiB, which stays under
Kafka's default 1 MiB message limit: a dead letter that itself could not be written would stop
the processor that the DLQ exists to keep going (an oversized message is the usual culprit)."""


class DeadLetter(WireModel):
    """One unusable message, where it came from and why it was refused."""

    type: Literal["dead_letter"] = "dead_letter"
    schema_version: SchemaVersion = SCHEMA_VERSION
    reason: str = Field(description="What was wrong, naming the value and what was expected.")
    field: str = Field(description="Dotted path of the offending field; '' for the whole message.")
    source_topic: str
    partition: KafkaPartition
    offset: KafkaOffset
    key_b64: str | None = Field(description="The original key, base64; null if it had none.")
    value_b64: str = Field(description="The original value (or its first bytes), base64.")
    value_bytes: int = Field(ge=0, description="Size of the original value in bytes.")
    value_truncated: bool = Field(
        False, description="Only the first bytes of the value are kept (see value_bytes)."
    )
    ts: Timestamp = Field(description="When the message was refused.")

    @classmethod
    def for_message(
        cls,
        error: InvalidEventError,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        *,
        ts: datetime | None = None,
        max_value_bytes: int = MAX_DEAD_LETTER_VALUE_BYTES,
    ) -> DeadLetter:
        """The dead letter for `value` (read at topic/partition/offset) refused with `error`."""
        kept = value[:max_value_bytes]
        return cls(
            reason=error.problem,
            field=error.field,
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
            value_b64=base64.b64encode(kept).decode("ascii"),
            value_bytes=len(value),
            value_truncated=len(kept) < len(value),
            ts=ts if ts is not None else datetime.now(UTC),
        )
