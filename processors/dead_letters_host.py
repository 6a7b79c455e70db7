"""The dead letters' mirror: every dead letter of the DLQ topic becomes a row of the
`dead_letters` table, so that the dashboard reads them from ClickHouse
(projections/dead_letter_reads.py) and never from Kafka.

A consumer in a group of its own (`dead_letters_group`; every processors process is a member, so
the topic's partitions are shared out), a fetched batch at a time: decode each record, write the
batch's rows through the processors' projection writes (retried with backoff until the engine
takes them; the health endpoint sees the failures), then commit. No state, so no
`StatefulConsumer`: its protocol is there to keep states and rows in step, and a batch here is
done once its rows are written.

Failure protocol: the commit comes after the write, so a process that dies (or loses the
partitions) between the two leaves the batch uncommitted, and the partitions' next reader writes
its rows again. Those are the same rows: a row's key is its record's DLQ position and the dead
letter's own time (ts, dlq_partition, dlq_offset), and the table (a ReplacingMergeTree on that
key) keeps one. The other order would lose for good the rows of a batch committed and not
written.

A record that is not a dead letter (something else written to the DLQ topic) is logged and
skipped, counted in `skipped`; it is not dead-lettered: the DLQ is where unusable messages end,
and a dead letter of it would go to the very topic it was read from (where the record stays, at
its offset, for an operator to see). A dead letter whose row the engine refuses goes back to
the DLQ as the projection writes send refused rows, naming the DLQ record; that one is
mirrored like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from aiokafka.errors import KafkaError

from steplog.errors import InvalidEventError
from steplog.kafka import consumer as kafka_consumer
from steplog.kafka import start_or_stop
from steplog.projections.writer import RefusedRow, TableRows
from steplog.schemas.codec import decode_dead_letter

from .config import ProcessorConfig
from .dead_letters import RowSource
from .projection_writes import ProjectionWrites
from .stateful_consumer import Record

__all__ = ["DEAD_LETTER_COLUMNS", "DeadLettersHost", "dead_letters_group"]

log = logging.getLogger("steplog.processors")

TABLE: Final = "dead_letters"
DEAD_LETTER_COLUMNS: Final = (
    "ts", "reason", "field", "source_topic", "source_partition", "source_offset", "key_b64",
    "value_b64", "value_bytes", "value_truncated", "dlq_partition", "dlq_offset",
)
_POLL_MS: Final = 1000


def dead_letters_group(config: ProcessorConfig) -> str:
    """The mirror's consumer group (one of its own: its offsets are the DLQ's, not the
    events')."""
    return f"{config.app_id}-dead-letters"


class DeadLettersHost:
    """Mirrors the DLQ topic into the `dead_letters` table until cancelled (`run`)."""

    def __init__(self, config: ProcessorConfig, writes: ProjectionWrites) -> None:
        self.config = config
        self.writes = writes
        self.skipped = 0
        """Records of the DLQ topic that were not dead letters, since start."""

    async def run(self) -> None:
        """Consume and mirror until cancelled (the app stopping) or until a write fails for
        good (the store process gone: the error stops the processors)."""
        config = self.config
        consumer = kafka_consumer(
            config.bootstrap,
            group_id=dead_letters_group(config),
            group_instance_id=config.membership.instance_id,
            client_id=config.membership.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=config.max_fetch_bytes,
        )
        consumer.subscribe([config.topics.dlq])
        await start_or_stop(consumer)
        try:
            while True:
                fetched = await consumer.getmany(
                    timeout_ms=_POLL_MS, max_records=config.batch_size
                )
                if not fetched:
                    continue
                await self.mirror([record for records in fetched.values() for record in records])
                ends = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
                try:
                    await consumer.commit(ends)
                except KafkaError as exc:
                    # The group moved on (a rebalance during the write): the rows are written,
                    # and the partitions' next reader writes the same rows again.
                    log.warning("%s: commit of %s failed, the records will be mirrored again: "
                                "%r", config.topics.dlq,
                                {tp.partition: end for tp, end in ends.items()}, exc)
        finally:
            await consumer.stop()

    async def mirror(self, records: Sequence[Record]) -> None:
        """Write the rows of `records` (retried until written), skipping what is not a dead
        letter."""
        rows = TableRows(DEAD_LETTER_COLUMNS)
        for record in records:
            try:
                # The cap is the largest record the processors fetch: a dead letter keeps up
                # to 512 KiB of its value, more than a decode's default allows.
                letter = decode_dead_letter(record.value, max_bytes=self.config.max_fetch_bytes)
            except InvalidEventError as exc:
                self.skipped += 1
                log.warning(
                    "%s[%d]@%d is not a dead letter, skipped (%d so far): %s",
                    record.topic, record.partition, record.offset, self.skipped, exc,
                )
                continue
            rows.rows.append((
                letter.ts, letter.reason, letter.field, letter.source_topic, letter.partition,
                letter.offset, letter.key_b64, letter.value_b64, letter.value_bytes,
                letter.value_truncated, record.partition, record.offset,
            ))
        await self.writes.write({TABLE: rows}, self._dlq_position)

    def _dlq_position(self, refused: RefusedRow) -> RowSource:
        """Where the dead letter behind a refused row was read (its DLQ key is the source's
        key in base64, as `add_dead_letter` sent it)."""
        key_b64 = refused.values["key_b64"]
        return RowSource(
            self.config.topics.dlq, int(refused.values["dlq_partition"]),
            int(refused.values["dlq_offset"]), None if key_b64 is None else str(key_b64).encode(),
        )
