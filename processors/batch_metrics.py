"""What one batch of the events topic did to its runs, counted for the metrics (steplog/metrics.py):
events folded by type, runs started and ended, steps ended. The fold host's (live) only: replay
folds in processes of its own and counts nothing, so a rebuild never inflates the live counters.

A run's counts are transitions: a run *started* when the batch gave it its first run.started or
first step; it *ended*, and a step *ended*, when its row's status became final and was not
before the batch. "Before" is what the run's state held when the batch loaded it (`load`, in
place of the store's `get`): its version, whether it had started, its steps' statuses (cheap:
about 0.5 µs for a run of ten steps). A run's status before is only needed when its row ends
final, and then only if it may have been final before (`_may_have_ended`: it had an end event,
a failed step or a complete graph); it is then derived from the stored state, which the store
still holds until the batch is kept (`FoldHost.process_events`, step 4).

Counts go to the metrics once per batch and label set (module doc of steplog/metrics.py). A
batch folded again after a crash counts again: the counters are for rates and alerts, not for
accounting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from steplog.metrics import (
    MAX_FLOWS_PER_PROJECT,
    MAX_PROJECTS,
    MAX_STEPS_PER_FLOW,
    BoundedLabels,
    metrics,
)
from steplog.schemas.flows import FlowDefinition, flow_definition_key
from steplog.schemas.statuses import ENDED_RUN_STATUSES, StepStatus

from .batch_fold import FoldedBatch
from .fold.effects import RunRowChanged
from .fold.run_rows import take_rows
from .fold.state import RunState

__all__ = ["BatchMetrics", "RunLabels"]

_FINAL_STEP_STATUSES = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED})
_KEPT_DECISIONS = 100_000
"""Label decisions kept at most (values made up past the bounds are decided again each time)."""


class RunLabels:
    """Project, flow and step labels, bounded (steplog.metrics.BoundedLabels), each decision
    kept: a batch asks about the same few flows and steps over and over."""

    def __init__(self) -> None:
        self._projects = BoundedLabels(MAX_PROJECTS)
        self._flows = BoundedLabels(MAX_FLOWS_PER_PROJECT)
        self._steps = BoundedLabels(MAX_STEPS_PER_FLOW)
        self._runs: dict[tuple[str, str], tuple[str, str]] = {}
        self._steps_of: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    def run(self, project: str, flow: str) -> tuple[str, str]:
        labels = self._runs.get((project, flow))
        if labels is None:
            bounded = self._projects((), project)
            labels = (bounded, self._flows((bounded,), flow))  # scopes bounded too
            if len(self._runs) < _KEPT_DECISIONS:
                self._runs[(project, flow)] = labels
        return labels

    def step(self, project: str, flow: str, step: str) -> tuple[str, str, str]:
        labels = self._steps_of.get((project, flow, step))
        if labels is None:
            run = self.run(project, flow)
            labels = (*run, self._steps(run, step))
            if len(self._steps_of) < _KEPT_DECISIONS:
                self._steps_of[(project, flow, step)] = labels
        return labels


@dataclass(frozen=True, slots=True)
class _Before:
    started: bool
    may_have_ended: bool
    steps: dict[str, str]


def _started(state: RunState) -> bool:
    return state.first_started_at is not None or state.first_step_at is not None


def _may_have_ended(state: RunState) -> bool:
    """False when the state's run row cannot be final: a row is final only after an end event,
    a failed step, or with every step of its flow's graph done (fold/run_rows.py, `run_outcome`).
    Spares the decode of `BatchMetrics._ended_before` for most runs."""
    return bool(state.ended is not None or state.failed
                or (state.flow_tag is not None and state.incomplete_graph_steps == 0))


class BatchMetrics:
    """The counts of one batch (module docstring): `load` is the batch's `FoldedBatch.load`,
    `folded` is told of each event folded, `count` adds the batch's counts to the metrics."""

    def __init__(
        self,
        stored: Callable[[int, bytes], RunState | None],
        flows: Mapping[str, FlowDefinition],
        labels: RunLabels,
    ) -> None:
        self.stored = stored
        self.flows = flows
        self.labels = labels
        self._before: dict[tuple[str, str, str], _Before] = {}
        """By (project, flow, run_id), as the rows name their run; absent: a new run."""
        self._versions: dict[bytes, int] = {}
        self._types: Counter[str] = Counter()

    def load(self, partition: int, state_key: bytes) -> RunState | None:
        state = self.stored(partition, state_key)
        if state is None:
            self._versions[state_key] = 0
        else:
            self._before[(state.project, state.flow, state.run_id)] = _Before(
                _started(state), _may_have_ended(state),
                {key: step.status for key, step in state.steps.items()},
            )
            self._versions[state_key] = state.version
        return state

    def folded(self, state_key: bytes, state: RunState, event_type: str) -> None:
        """An event was folded into `state`; counted if it was new to the run (a re-delivery
        leaves the version as it was)."""
        version = len(state.seen)
        if version != self._versions[state_key]:
            self._versions[state_key] = version
            self._types[event_type] += 1

    def count(self, batch: FoldedBatch) -> None:
        """Add the batch's counts to the metrics; once its rows are built (`add_run_rows`) and
        before its states replace the stored ones."""
        m, labels = metrics(), self.labels
        for event_type, n in self._types.items():
            m.events_folded.labels(event_type).inc(n)
        befores = self._before
        started: Counter[tuple[str, str]] = Counter()
        for state, _ in batch.touched.values():
            before = befores.get((state.project, state.flow, state.run_id))
            if _started(state) and (before is None or not before.started):
                started[labels.run(state.project, state.flow)] += 1
        for run, n in started.items():
            m.runs_started.labels(*run).inc(n)
        ended: Counter[tuple[str, str, str]] = Counter()
        for run_key, row in batch.projection.runs.items():
            if row.status in ENDED_RUN_STATUSES and not self._ended_before(run_key, batch):
                ended[(*labels.run(row.project, row.flow), row.status)] += 1
        for run_status, n in ended.items():
            m.runs_ended.labels(*run_status).inc(n)
        steps: Counter[tuple[str, str, str, str]] = Counter()
        for step in batch.projection.steps.values():
            if step.status in _FINAL_STEP_STATUSES:
                before = befores.get((step.project, step.flow, step.run_id))
                if before is None or before.steps.get(step.step_key) not in _FINAL_STEP_STATUSES:
                    steps[(*labels.step(step.project, step.flow, step.step_key),
                           step.status)] += 1
        for step_status, n in steps.items():
            m.steps_ended.labels(*step_status).inc(n)

    def _ended_before(self, run_key: tuple[str, str, str], batch: FoldedBatch) -> bool:
        before = self._before.get(run_key)
        if before is None or not before.may_have_ended:
            return False  # new to this batch, or could not have ended before it
        state_key = "\x00".join(run_key).encode()  # batch_fold.run_state_key
        prior = self.stored(batch.touched[state_key][1], state_key)  # fresh: the batch's changed
        if prior is None:
            return False
        # The run row of the stored state, as take_rows builds it for rows deferred by the fold.
        prior.pending_rows = {None}
        flow = self.flows.get(flow_definition_key(prior.project, prior.flow))
        return any(isinstance(effect, RunRowChanged) and effect.row.status in ENDED_RUN_STATUSES
                   for effect in take_rows(prior, flow))
