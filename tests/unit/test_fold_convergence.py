"""The fold converges: any order of a run's events, with any re-deliveries, gives the same state
and the same last row per key, which is what lets replay from offset 0 equal live processing.

Runs are generated the way SDKs produce them (a flow graph or none; steps that complete, skip,
retry, fail for good, park, or never report; record_step events with seq 0 from another process;
run events for scheduling, start, interruption and the end) with timestamps drawn from a few
values, so that ties on ts and seq are common and the event_id tie-break is exercised.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steplog.processors.fold.effects import (
    ClearTimer,
    Effect,
    RunRowChanged,
    SetTimer,
    StepRowChanged,
    latest_rows,
)
from steplog.processors.fold.run import apply_event, fold_events
from steplog.processors.fold.run_rows import current_rows, take_rows
from steplog.processors.fold.rows import RunRow, StepRow
from steplog.processors.fold.state import RunState
from steplog.processors.fold.workflow import wanted_timers
from steplog.schemas.base import ErrorInfo
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunCompletedPayload,
    RunFailed,
    RunFailedPayload,
    RunInterrupted,
    RunResumed,
    RunScheduled,
    RunScheduledPayload,
    RunStarted,
    RunStartedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepInvoked,
    StepInvokedPayload,
    StepKind,
    StepSkipped,
    StepSleeping,
    StepSleepingPayload,
    StepStarted,
    StepStartedPayload,
    StepWaiting,
    StepWaitingPayload,
)
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)

STEP_SCRIPTS = (
    "unreported",
    "skipped",
    "running",
    "completed",
    "completed_no_start",
    "failed_final",
    "retry_then_completed",
    "retry_then_failed",
    "retrying",
    "sleeping",
    "slept",
    "waiting",
    "invoked",
    "invoked_then_completed",
    "record_step_running_and_success",
    "failed_then_completed_same_attempt",
    "started_twice",
)
RUN_STARTS = ("none", "started", "scheduled", "scheduled_and_started")
RUN_ENDS = ("none", "completed", "failed", "cancelled", "completed_and_cancelled")
PAUSES = ("none", "interrupted", "interrupted_and_resumed")


class _Builder:
    def __init__(self, draw: Any, run_id: str) -> None:
        self.draw = draw
        self.run_id = run_id
        self.seq = 0
        self.count = 0
        self.events: list[Event] = []

    def envelope(self, *, attempt: int = 1, seq: int | None = None) -> dict[str, Any]:
        self.count += 1
        if seq is None:
            self.seq += 1
            seq = self.seq
        # Few distinct times: ties are common, and seq and event_id must break them.
        ts = T0 + timedelta(seconds=self.draw(st.integers(0, 6)))
        return {
            "project": "acme",
            "flow": "checkout",
            "run_id": self.run_id,
            "event_id": f"{self.draw(st.integers(0, 9))}-{self.count:03d}",
            "ts": ts,
            "seq": seq,
            "attempt": attempt,
        }

    def add(self, event: Event) -> None:
        self.events.append(event)

    def started(self, key: str, attempt: int = 1, seq: int | None = None) -> None:
        self.add(
            StepStarted(
                **self.envelope(attempt=attempt, seq=seq),
                step_key=key,
                payload=StepStartedPayload(
                    kind=StepKind.RUN,
                    input={"key": key, "attempt": attempt},
                    metadata={"host": f"w{attempt}", "attempt": attempt},
                ),
            )
        )

    def completed(self, key: str, attempt: int = 1, seq: int | None = None) -> None:
        self.add(
            StepCompleted(
                **self.envelope(attempt=attempt, seq=seq),
                step_key=key,
                payload=StepCompletedPayload(
                    output={"done": key},
                    duration_ms=self.draw(st.sampled_from([None, 12.5])),
                    metadata={"http_status": 200},
                ),
            )
        )

    def failed(
        self, key: str, attempt: int = 1, retry: bool = False, seq: int | None = None
    ) -> None:
        self.add(
            StepFailed(
                **self.envelope(attempt=attempt, seq=seq),
                step_key=key,
                payload=StepFailedPayload(
                    error=ErrorInfo(type="TimeoutError", message=f"{key} attempt {attempt}"),
                    retry_at=T0 + timedelta(seconds=30) if retry else None,
                ),
            )
        )


@st.composite
def runs(draw: Any) -> tuple[list[Event], FlowDefinition | None]:
    """One run's events, in the order its producers sent them, and its flow definition."""
    size = draw(st.integers(1, 6))
    keys = [f"s{index}" for index in range(size)]
    flow: FlowDefinition | None = None
    if draw(st.booleans()):
        edges = [
            FlowEdge(source=keys[i], target=keys[j])
            for i in range(size)
            for j in range(i + 1, size)
            if draw(st.integers(0, 2)) == 0
        ]
        flow = FlowDefinition(
            project="acme",
            slug="checkout",
            step_deadline_ms=draw(st.sampled_from([None, 1_000])),
            steps=[
                FlowStep(sdk_step_key=key, deadline_ms=draw(st.sampled_from([None, 500])))
                for key in keys
            ],
            edges=edges,
            ts=T0,
        )
        if draw(st.booleans()):
            keys.append("not-in-graph")
    b = _Builder(draw, run_id="run-1")

    start = draw(st.sampled_from(RUN_STARTS))
    if start.startswith("scheduled"):
        b.add(
            RunScheduled(
                **b.envelope(),
                payload=RunScheduledPayload(start_at=T0 + timedelta(seconds=1), input={"n": 1}),
            )
        )
    if start.endswith("started"):
        b.add(RunStarted(**b.envelope(), payload=RunStartedPayload(app="shop", input={"n": 2})))

    for key in keys:
        script = draw(st.sampled_from(STEP_SCRIPTS))
        if script == "skipped":
            b.add(StepSkipped(**b.envelope(), step_key=key))
        elif script == "running":
            b.started(key)
        elif script == "completed":
            b.started(key)
            b.completed(key)
        elif script == "completed_no_start":
            b.completed(key)
        elif script == "failed_final":
            b.started(key)
            b.failed(key)
        elif script in ("retry_then_completed", "retry_then_failed", "retrying"):
            b.started(key)
            b.failed(key, retry=True)
            if script != "retrying":
                b.started(key, attempt=2)
                if script == "retry_then_completed":
                    b.completed(key, attempt=2)
                else:
                    b.failed(key, attempt=2)
        elif script == "sleeping":
            b.started(key)
            b.add(
                StepSleeping(
                    **b.envelope(),
                    step_key=key,
                    payload=StepSleepingPayload(wake_at=T0 + timedelta(seconds=60)),
                )
            )
        elif script == "slept":  # a sleep (no step.started) that the timer service woke
            b.add(
                StepSleeping(
                    **b.envelope(),
                    step_key=key,
                    payload=StepSleepingPayload(
                        wake_at=T0 + timedelta(seconds=60), kind=StepKind.SLEEP_UNTIL
                    ),
                )
            )
            b.add(StepCompleted(**b.envelope(), step_key=key))
        elif script in ("invoked", "invoked_then_completed"):
            b.add(
                StepInvoked(
                    **b.envelope(),
                    step_key=key,
                    payload=StepInvokedPayload(child_run_id=f"child-{key}", workflow="fraud"),
                )
            )
            if script == "invoked_then_completed":
                b.completed(key)
        elif script == "waiting":
            b.add(
                StepWaiting(
                    **b.envelope(),
                    step_key=key,
                    payload=StepWaitingPayload(
                        event="order.approved",
                        timeout_at=draw(st.sampled_from([None, T0 + timedelta(seconds=90)])),
                    ),
                )
            )
        elif script == "record_step_running_and_success":
            b.started(key, seq=0)
            b.completed(key, seq=0)
        elif script == "failed_then_completed_same_attempt":
            b.failed(key, seq=0)
            b.completed(key, seq=0)
        elif script == "started_twice":  # a worker restarted mid-step
            b.started(key)
            b.started(key)

    pause = draw(st.sampled_from(PAUSES))
    if pause != "none":
        b.add(RunInterrupted(**b.envelope()))
    if pause == "interrupted_and_resumed":
        b.add(RunResumed(**b.envelope()))

    end = draw(st.sampled_from(RUN_ENDS))
    if end.startswith("completed"):
        b.add(RunCompleted(**b.envelope(), payload=RunCompletedPayload(output={"ok": True})))
    if end == "failed":
        error = ErrorInfo(type="WorkflowError", message="gave up")
        b.add(RunFailed(**b.envelope(), payload=RunFailedPayload(error=error)))
    if end.endswith("cancelled"):
        b.add(RunCancelled(**b.envelope()))

    if not b.events:  # a run exists only once something was said about it
        b.started(keys[0])
    return b.events, flow


def redelivered(events: list[Event], draw: Any) -> list[Event]:
    """The events in any order, some of them delivered more than once, anywhere."""
    delivered = list(draw(st.permutations(events)))
    copies = draw(
        st.lists(
            st.tuples(st.integers(0, len(events) - 1), st.integers(0, len(events) * 2)),
            max_size=6,
        )
    )
    for which, where in copies:
        delivered.insert(min(where, len(delivered)), events[which])
    return delivered


def final_rows(effects: list[Effect]) -> tuple[RunRow, dict[str, StepRow]]:
    runs_by_key, steps_by_key = latest_rows(effects)
    (run,) = runs_by_key.values()
    return run, {key[3]: row for key, row in steps_by_key.items()}


SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(run=runs(), data=st.data())
def test_any_order_with_any_duplicates_gives_the_same_state_and_rows(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    events, flow = run
    expected_state, expected_effects = fold_events(events, flow)
    expected_run, expected_steps = final_rows(expected_effects)

    delivered = redelivered(events, data.draw)
    state, effects = fold_events(delivered, flow)
    got_run, got_steps = final_rows(effects)

    # created_at alone is the first event's ts, whichever came first (RunState.created_at).
    first_ts = delivered[0].ts.astimezone(UTC)
    assert state.created_at == got_run.created_at == first_ts
    assert replace(state, created_at=expected_state.created_at) == expected_state
    assert replace(got_run, created_at=expected_run.created_at) == expected_run
    assert got_steps.keys() == expected_steps.keys()
    for key, row in expected_steps.items():
        assert got_steps[key] == row, key


@SETTINGS
@given(run=runs(), data=st.data())
def test_last_row_per_key_is_its_highest_version_and_equal_versions_are_equal_rows(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    # ReplacingMergeTree keeps the highest version per key, and between equal versions any
    # one: both are only safe if versions never go down and equal versions carry equal rows.
    events, flow = run
    state, effects = fold_events(redelivered(events, data.draw), flow)
    emitted: dict[tuple[str, str], list[RunRow | StepRow]] = defaultdict(list)
    for effect in effects:
        if isinstance(effect, StepRowChanged):
            emitted[("step", effect.row.step_key)].append(effect.row)
        elif isinstance(effect, RunRowChanged):
            emitted[("run", "")].append(effect.row)
    by_version: dict[tuple[tuple[str, str], int], RunRow | StepRow] = {}
    for key, rows in emitted.items():
        versions = [row.version for row in rows]
        assert versions == sorted(versions), key
        for row in rows:
            assert by_version.setdefault((key, row.version), row) == row, key

    run_row, step_rows = current_rows(state, flow)
    assert final_rows(effects) == (run_row, {row.step_key: row for row in step_rows})
    assert run_row.version == len({event.event_id for event in events})


@SETTINGS
@given(run=runs(), data=st.data())
def test_rows_deferred_over_any_batches_are_the_last_rows_folding_event_by_event_gives(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    events, flow = run
    delivered = redelivered(events, data.draw)
    expected_state, expected_effects = fold_events(delivered, flow)
    ends = sorted(data.draw(st.sets(st.integers(1, len(delivered)))) | {len(delivered)})

    state: RunState | None = None
    effects: list[Effect] = []
    start = 0
    for end in ends:  # a host's batches: rows taken once per batch
        for event in delivered[start:end]:
            state, produced = apply_event(state, event, flow, defer_rows=True)
            assert not [e for e in produced if isinstance(e, RunRowChanged | StepRowChanged)]
            effects.extend(produced)
        assert state is not None
        effects.extend(take_rows(state, flow))
        start = end

    assert state == expected_state and state.pending_rows is None
    assert final_rows(effects) == final_rows(expected_effects)
    assert engine_effects(effects) == engine_effects(expected_effects)


@SETTINGS
@given(run=runs(), data=st.data())
def test_state_stored_and_restored_between_any_two_events_folds_on_the_same(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    events, flow = run
    expected_state, _ = fold_events(events, flow)
    split = data.draw(st.integers(1, len(events)))
    state, _ = fold_events(events[:split], flow)
    restored = RunState.from_bytes(state.to_bytes())
    assert restored == state
    for event in events[split:]:
        restored, _ = apply_event(restored, event, flow)
    assert restored == expected_state


@SETTINGS
@given(run=runs())
def test_folding_every_event_again_changes_nothing(
    run: tuple[list[Event], FlowDefinition | None],
) -> None:
    events, flow = run
    state, effects = fold_events(events, flow)
    before = state.copy()
    final = final_rows(effects)
    state, again = fold_events(events, flow, state)
    assert state == before
    assert final_rows(again) == final


# --- the engine's effects ------------------------------------------------------------------------


def engine_effects(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, RunRowChanged | StepRowChanged)]


@SETTINGS
@given(run=runs(), data=st.data())
def test_timer_effects_in_any_order_leave_exactly_the_timers_the_state_wants(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    # The timer service applies each batch's SetTimer / ClearTimer in order; whatever the
    # order of the events, it must end up holding what the final state wants (what a restart
    # rebuilds), or a timer would fire for nothing or never.
    events, flow = run
    state, effects = fold_events(redelivered(events, data.draw), flow)
    held: dict[tuple[str, str], SetTimer] = {}
    for effect in effects:
        if isinstance(effect, SetTimer):
            held[(effect.kind, effect.step_key)] = effect
        elif isinstance(effect, ClearTimer):
            held.pop((effect.kind, effect.step_key), None)
    assert held == wanted_timers(state)


@SETTINGS
@given(run=runs(), data=st.data())
def test_duplicates_add_no_engine_effect(
    run: tuple[list[Event], FlowDefinition | None], data: st.DataObject
) -> None:
    events, flow = run
    delivered = redelivered(events, data.draw)
    first_copies: dict[str, Event] = {}
    for event in delivered:
        first_copies.setdefault(event.event_id, event)
    _, with_duplicates = fold_events(delivered, flow)
    _, without = fold_events(list(first_copies.values()), flow)
    assert engine_effects(with_duplicates) == engine_effects(without)
