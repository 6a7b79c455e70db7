"""The flow-control host: one batch of the flow-control topic decoded, applied per key (the pure
part: processors/fold/flow_control.py), carried out and kept (`FlowControlHost.process_flow`),
and the key's ticks (`FlowControlHost.run_ticks`).

Same protocol as the signals' (processors/signals_host.py): the admitted `start_run`s are
acknowledged, then the keys' states are put in the store; the consumer sends them to the
changelog and commits after that. A crash in between handles the batch again from the older
states and sends the same commands (same command ids: the workers drop the duplicates).

Why a topic of its own: a key's starts come from everywhere (a trigger is decided in its event
name's signals partition, a scheduled start in its run's events partition, a child's in its
parent's), so no partition the processors already read sees all of one key. The dispatcher
re-keys them (processors/flow_gate.py) by `<project>/<app>/<workflow>/<key value>`, and one
partition of this topic then orders a key's starts and ends; its state moves with the
partition on a rebalance and comes back from the changelog after a restart.

Ticks: a key with a debounced start, or starts held by a full throttle window, has a next due
time (`FlowKeyState.next_due_ms`). The host keeps them in a heap (rebuilt from every state when
partitions are recovered), and writes `flow.tick` to the key's partition when one is due (its
id derived from the key and due time); the tick is decided in log order like everything else,
so a tick sent twice (a restart) finds nothing more to do.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from steplog.errors import InvalidEventError
from steplog.projections.writer import RefusedRow, TableRows
from steplog.schemas.codec import decode_flow_message, encode
from steplog.schemas.flow_control import FlowTick
from steplog.schemas.ids import derived_id

from .config import ProcessorConfig
from .dead_letters import RowSource, add_dead_letter
from .dispatch import Planned
from .fold.effects import SendCommand
from .fold.flow_control import FlowKeyState, FlowStartChanged, apply_flow_message
from .projection_writes import ProjectionWrites
from .state_store import StateStore
from .stateful_consumer import Record

__all__ = ["FlowControlHost"]

_COLUMNS: Final = ("project", "workflow", "app", "flow_key", "run_id", "status", "reason",
                   "priority", "requested_at", "updated_at", "version")
_RUN_ID: Final = _COLUMNS.index("run_id")

log = logging.getLogger("steplog.processors")

_TICK_MAX_SLEEP_S: Final = 1.0


class FlowControlHost:
    """The flow-control topic's batch, and its keys' ticks."""

    def __init__(
        self, config: ProcessorConfig, states: StateStore[FlowKeyState], writes: ProjectionWrites
    ) -> None:
        self.config = config
        self.states = states
        self.writes = writes
        self.dispatcher = writes.dispatcher
        self._sources: dict[str, RowSource] = {}
        """Where each row not written yet came from, by run id (for a refused row's dead
        letter)."""
        self._due: dict[bytes, int] = {}
        """Each key's next due time (ms), as last computed from its stored state."""
        self._heap: list[tuple[int, bytes]] = []
        """(due, key); an entry whose due is no longer the key's is skipped when popped."""
        self._sooner = asyncio.Event()

    async def process_flow(self, batch: Sequence[Record]) -> Mapping[str, TableRows]:
        """Handle a batch and keep the touched keys' states (memory; the changelog later)."""
        outbox = self.dispatcher.outbox()
        planned: list[Planned] = []
        touched: dict[bytes, tuple[FlowKeyState, int]] = {}
        changed: dict[tuple[str, str, str], FlowStartChanged] = {}
        for message in batch:
            try:
                decoded = decode_flow_message(message.value, max_bytes=self.config.max_event_bytes)
                key = decoded.topic_key.encode()
                if message.key != key:
                    # A key's state lives in the partition of its key.
                    raise InvalidEventError(
                        "key", f"message key {message.key!r} is not the message's {key!r}"
                    )
            except InvalidEventError as exc:
                add_dead_letter(self.config.topics.dlq, outbox, exc, message, message.value)
                continue
            held = touched.get(key)
            state = held[0] if held else (
                self.states.get(message.partition, key) or FlowKeyState()
            )
            effects = apply_flow_message(state, decoded, message.timestamp)
            touched[key] = (state, message.partition)
            for effect in effects:
                if isinstance(effect, SendCommand):
                    planned.append(Planned(effect))
                else:
                    # The start's latest word in the batch is the one its row keeps.
                    changed[(effect.project, effect.workflow, effect.run_id)] = effect
                    self._sources[effect.run_id] = RowSource(
                        message.topic, message.partition, message.offset, message.key
                    )
        await self.dispatcher.carry_out(planned, outbox)
        for key, (state, partition) in touched.items():
            self.states.put(partition, key, state)
            self._schedule(key, state)
        if not changed:
            return {}
        return {"flow_starts": TableRows(_COLUMNS, [_row(c) for c in changed.values()])}

    async def write_rows(self, rows: Mapping[str, TableRows]) -> None:
        """Write the batches' `flow_starts` rows; a refused row's dead letter names the flow
        message that last changed it."""
        await self.writes.write(rows, self._source)
        for row in rows["flow_starts"].rows:
            self._sources.pop(row[_RUN_ID], None)

    def _source(self, refused: RefusedRow) -> RowSource:
        run_id = str(refused.values["run_id"])
        return self._sources.get(
            run_id, RowSource(self.config.topics.flow_control, 0, 0, run_id.encode())
        )

    async def recovered(self) -> None:
        """Rebuild the ticks from every state held (after partitions were assigned)."""
        self._due.clear()
        self._heap.clear()
        for key, state in self.states.items():
            self._schedule(key, state)

    def _schedule(self, key: bytes, state: FlowKeyState) -> None:
        due = state.next_due_ms()
        if due is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        if self._heap[0] == (due, key):
            self._sooner.set()

    async def run_ticks(self) -> None:
        """Write each key's tick when it is due, for ever."""
        while True:
            now_ms = int(time.time() * 1000)
            due = self._take_due(now_ms)
            if due:
                await self._tick(due)
                continue
            wait_s = _TICK_MAX_SLEEP_S
            if self._heap:
                wait_s = min(wait_s, max(0.0, (self._heap[0][0] - now_ms) / 1000))
            self._sooner.clear()
            try:
                await asyncio.wait_for(self._sooner.wait(), wait_s)
            except TimeoutError:
                pass

    def _take_due(self, now_ms: int) -> list[tuple[bytes, int]]:
        due: list[tuple[bytes, int]] = []
        while self._heap and self._heap[0][0] <= now_ms:
            at, key = heapq.heappop(self._heap)
            if self._due.get(key) == at:
                del self._due[key]
                due.append((key, at))
        return due

    async def _tick(self, due: list[tuple[bytes, int]]) -> None:
        outbox = self.dispatcher.outbox()
        for key, at in due:
            state = self.states.find(key)
            if state is None or state.next_due_ms() != at:  # moved away, or decided since
                continue
            project, app, workflow, value = state.names
            tick = FlowTick(
                event_id=derived_id("flow-tick", key.decode(), str(at)), project=project,
                app=app, workflow=workflow, key=value, ts=datetime.now(UTC),
                due=_instant(at),
            )
            outbox.add(self.config.topics.flow_control, key,
                       encode(tick, max_bytes=self.config.max_event_bytes))
        await outbox.flush()


def _row(change: FlowStartChanged) -> tuple[object, ...]:
    return (
        change.project, change.workflow, change.app, change.key, change.run_id, change.status,
        change.reason, change.priority, _instant(change.requested_ms), _instant(change.at_ms),
        change.version,
    )


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
