"""One batch of the events topic folded: what the processors (`fold_host.FoldHost.process_events`)
and replay (`steplog/server/replay_fold.py`) both do with it, so that a rebuilt projection is the
live one by construction.

A batch folds each event onto its run's state (read once from the caller's store, then kept as
an object while the batch lasts) and adds the event's row; at its end `add_run_rows` adds each
touched run's changed rows, built once per run rather than after every event (the fold's
deferred rows). What the caller does besides is its own: the processors dead-letter what does
not decode, carry out the fold's effects and keep the log position in the state; replay counts
what does not decode and drops the effects (a rebuild must never start, resume or cancel).

Where signatures are enforced, both refuse an event that fails the record checks
(processors/record_checks.py) as they refuse one that does not decode: the processors through
the fold host, right after it decodes each event, and replay with the same checks over a
snapshot of the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from steplog.errors import InvalidEventError
from steplog.schemas.codec import decode_event
from steplog.schemas.events import Event
from steplog.schemas.flows import FlowDefinition, flow_definition_key

from .fold.effects import Effect
from .fold.run import apply_event
from .fold.run_rows import take_rows
from .held_states import HeldStates, marked_end
from .projection_batch import ProjectionBatch
from .fold.state import RunState
from .fold.state_retention import run_end_ms
from .run_retention import RunAdmission, admission_of

__all__ = [
    "FoldedBatch", "HeldRunStates", "decode_run_event", "run_state_key",
]


def decode_run_event(key: bytes | None, value: bytes | None, max_bytes: int) -> Event:
    """A message of the events topic decoded; InvalidEventError also when its key is not the
    event's run id: the run's state lives in the partition of its key, and an event keyed
    otherwise would fold into a second, partial state of the same run. The processors and
    replay both read the topic through this one function, so they refuse the same records."""
    event = decode_event(value, max_bytes=max_bytes)
    if key != event.run_id.encode():
        raise InvalidEventError("run_id", f"message key {key!r} is not the event's run_id")
    return event


def run_state_key(event: Event) -> bytes:
    """The state table's key of an event's run. Runs are identified by project, flow and run id
    together (two flows may both use a request id as their run id); all three share the Kafka
    key's partition, since the message key is the run id."""
    return f"{event.project}\x00{event.flow}\x00{event.run_id}".encode()


@dataclass
class FoldedBatch:
    """The runs a batch touched and its rows so far (module docstring)."""

    flows: Mapping[str, FlowDefinition]
    """The flow definitions by `flow_definition_key` (the caller's, kept up to date)."""
    load: Callable[[int, bytes], RunState | None]
    """A run's state before the batch, by partition and state key."""
    projection: ProjectionBatch = field(default_factory=ProjectionBatch)
    touched: dict[bytes, tuple[RunState, int]] = field(default_factory=dict)
    """Each touched run's state (an object, changed in place by the fold) and partition."""
    admission: RunAdmission | None = None
    """The `run closed` rule (STEPLOG_STATE_RETENTION; processors/run_retention.py), if any."""

    def fold(
        self, event: Event, partition: int, offset: int, timestamp_ms: int = 0
    ) -> tuple[bytes, RunState, list[Effect]]:
        """Fold `event` (at `partition`@`offset`, its record's broker timestamp `timestamp_ms`)
        onto its run: the run's state key, its new state and the fold's effects.
        RunClosedError (an InvalidEventError) if its run left the state."""
        state_key = run_state_key(event)
        in_hand = self.touched.get(state_key)
        state = in_hand[0] if in_hand else self.load(partition, state_key)
        flow = self.flows.get(flow_definition_key(event.project, event.flow))
        if self.admission is not None:
            state = self.admission.admit(
                partition, timestamp_ms, state_key, state, in_hand=in_hand is not None
            )
        state, effects = apply_event(state, event, flow, defer_rows=True)
        if self.admission is not None:
            state.ended_ms = run_end_ms(state, flow)
        self.touched[state_key] = (state, partition)
        self.projection.add_event(event, partition, offset)
        return state_key, state, effects

    def add_run_rows(self) -> None:
        """Add each touched run's changed rows (once per batch: the fold defers them)."""
        for state, _ in self.touched.values():
            # The flow the batch folded the run with.
            flow = self.flows.get(flow_definition_key(state.project, state.flow))
            self.projection.add_effects(take_rows(state, flow))


class HeldRunStates:
    """Run states kept between batches as their changelog bytes in a `HeldStates`, outside the
    processors (replay's fold processes, benchmarks/state_memory.py); the processors' are in a
    `StateStore`, which also writes them to the changelog."""

    def __init__(self, held: HeldStates) -> None:
        self.held = held

    def get(self, partition: int, state_key: bytes) -> RunState | None:
        """`FoldedBatch.load` (None for a closed run's marker, as the processors' store)."""
        value = self.held.get(partition, state_key)
        if value is None or marked_end(value) is not None:
            return None
        return RunState.from_bytes(value)

    @property
    def admission(self) -> RunAdmission | None:
        """`FoldedBatch.admission` over these states, with the held states' retention."""
        return admission_of(self.held)

    def keep(self, folded: FoldedBatch) -> None:
        """Keep a batch's states (once it is folded), let finished runs go as the processors
        do (`HeldStates.expire`), then bring memory under its budget."""
        for state_key, (state, partition) in folded.touched.items():
            self.held.put(partition, state_key, state.to_bytes(), state.ended_ms)
        self.held.expire()
        self.held.spill()
