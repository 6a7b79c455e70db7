"""The signals' host: one batch of the signals topic decoded, applied per event name (the pure
part: processors/fold/signals.py), carried out and kept (`SignalsHost.process_signals`).

Same protocol as the fold's (processors/fold_host.py), without rows: the effects (start_run
commands, step.completed events) are acknowledged, then the names' states are put in the
stores; the consumer sends them to the changelogs and commits the offsets after that. A crash in
between handles the batch again from the old states and writes the same messages with the same
derived ids.

Where signatures are enforced (`checks`), a message that fails the record checks
(processors/record_checks.py) is dead-lettered with the rule it failed, like one that does not
decode: a signal of project B from a key of project A starts and resumes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from steplog.errors import InvalidEventError
from steplog.projections.writer import TableRows
from steplog.schemas.codec import decode_signals_message

from .config import ProcessorConfig
from .dead_letters import add_dead_letter
from .dispatch import Dispatcher, Planned
from .fold.signals import NameTriggers, NameWaits, apply_signals_message
from .record_checks import RecordChecks, SignedRecord
from .state_store import StateStore
from .stateful_consumer import Record
from .timer_service import Clock, utc_now

__all__ = ["SignalsHost"]


class SignalsHost:
    """The signals' batch: decode, apply per name, carry out, keep the names' states."""

    def __init__(
        self,
        config: ProcessorConfig,
        waits: StateStore[NameWaits],
        triggers: StateStore[NameTriggers],
        dispatcher: Dispatcher,
        clock: Clock = utc_now,
        checks: RecordChecks | None = None,
    ) -> None:
        self.config = config
        self.waits = waits
        self.triggers = triggers
        self.dispatcher = dispatcher
        self.clock = clock
        self.checks = checks
        """The record checks; None: not enforced."""

    async def process_signals(self, batch: Sequence[Record]) -> Mapping[str, TableRows]:
        """Handle a batch and keep the touched names' states (memory; the changelogs later);
        no rows."""
        outbox = self.dispatcher.outbox()
        planned: list[Planned] = []
        touched_waits: dict[bytes, tuple[NameWaits, int]] = {}
        touched_triggers: dict[bytes, tuple[NameTriggers, int]] = {}
        """The touched names' states and their partition, by name."""
        now = self.clock()
        # The consumer's records are aiokafka's ConsumerRecords: headers and log time too.
        records = cast(Sequence[SignedRecord], batch)
        if self.checks is not None:
            await self.checks.prepare(records)
        for message in records:
            try:
                decoded = decode_signals_message(
                    message.value, max_bytes=self.config.max_event_bytes
                )
                name_key = decoded.name.encode()
                if message.key != name_key:
                    # A name's waits and triggers live in the partition of its key.
                    raise InvalidEventError(
                        "name", f"message key {message.key!r} is not the message's name"
                    )
                if self.checks is not None:
                    self.checks.check(message, decoded.project)
            except InvalidEventError as exc:
                add_dead_letter(self.config.topics.dlq, outbox, exc, message, message.value)
                continue
            partition = message.partition
            held_waits = touched_waits.get(name_key)
            waits = held_waits[0] if held_waits else (
                self.waits.get(partition, name_key) or NameWaits()
            )
            held_triggers = touched_triggers.get(name_key)
            triggers = held_triggers[0] if held_triggers else (
                self.triggers.get(partition, name_key) or NameTriggers()
            )
            effects = apply_signals_message(waits, triggers, decoded, now)
            if decoded.type == "trigger.registered":
                touched_triggers[name_key] = (triggers, partition)
            else:
                touched_waits[name_key] = (waits, partition)
            planned.extend(Planned(effect) for effect in effects)
        await self.dispatcher.carry_out(planned, outbox)
        for name_key, (waits, partition) in touched_waits.items():
            self.waits.put(partition, name_key, waits)
        for name_key, (triggers, partition) in touched_triggers.items():
            self.triggers.put(partition, name_key, triggers)
        return {}
