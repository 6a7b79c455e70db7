"""Deterministic ids: the same facts give the same id, so a duplicate collapses downstream.

Workers, the timer service and the signals agent can all do a piece of work twice: a worker
killed after a write but before committing its command re-executes the pass, a timer restored
after a restart fires again, a signal is re-delivered. Each of those writes carries an id
derived from what the write is *about* (a run, a step, an attempt), never from when or by whom
it was made, so the second copy has the id of the first and its consumer drops it (events and
signals on `event_id`, commands on `command_id`, runs on `run_id`).

The algorithm is part of the wire contract (an SDK in another language must derive the same
ids): `uuid5(DERIVED_ID_NAMESPACE, "\\x1f".join(parts)).hex`, the name UTF-8 encoded, 32 lower
case hex digits like `new_event_id()`. The first part names the purpose, so that ids derived
for different purposes from the same run and step never meet.

| purpose | id | parts |
| --- | --- | --- |
| child run of `run_workflow` | run_id | "child", parent_run_id, step_key |
| signal written by `emit` | event_id | "emit", run_id, step_key |
| `wait.registered` of a wait step | event_id | "wait.registered", run_id, step_key, attempt |
| run started by a trigger | run_id | "trigger", signal_event_id, app, workflow |
| what a due timer writes | event_id / command_id | "timer", run_id, step_key, attempt, kind |
| `step.completed` resolving a wait | event_id | "wait", run_id, step_key, attempt |
| run started with an idempotency key | run_id | "idempotency", project, workflow, key, window_ms, window |
| that start's `run.scheduled` | event_id | "idempotent-start", run_id |

A timer of a whole run (a scheduled start) has no step: its step_key part is "".
"""

from __future__ import annotations

from typing import Final
from uuid import UUID, uuid5

__all__ = [
    "DERIVED_ID_NAMESPACE",
    "child_run_id",
    "derived_id",
    "emitted_signal_id",
    "timer_message_id",
    "triggered_run_id",
    "wait_registration_id",
    "wait_resolution_id",
]

DERIVED_ID_NAMESPACE: Final = UUID("9e4f0f48-12d1-5f1e-85f2-8a103e81dc9b")
"""uuid5(NAMESPACE_URL, "https://steplog.dev/ns/derived-id"); fixed forever: changing it
changes every derived id, and a replayed parent would start its children a second time."""

_SEPARATOR: Final = "\x1f"  # ASCII unit separator: never in a run id, step key or event name


def derived_id(*parts: str) -> str:
    """The id for `parts` (32 hex digits): equal parts give equal ids, on every machine.

    A part containing the separator (U+001F) is refused: ("a\\x1fb",) and ("a", "b") would
    otherwise derive the same id.
    """
    if not parts:
        raise ValueError("derived_id needs at least one part (the purpose)")
    for index, part in enumerate(parts):
        if _SEPARATOR in part:
            raise ValueError(
                f"derived_id part {index} ({part!r}) contains U+001F, the parts' separator"
            )
    return uuid5(DERIVED_ID_NAMESPACE, _SEPARATOR.join(parts)).hex


def child_run_id(parent_run_id: str, step_key: str) -> str:
    """The run id of the child a `run_workflow` step starts: a replayed parent re-derives the
    same id, so the child's duplicate start_run is dropped rather than starting a second child."""
    return derived_id("child", parent_run_id, step_key)


def emitted_signal_id(run_id: str, step_key: str) -> str:
    """The event_id of the signal an `emit` step writes; a replayed emit is a duplicate."""
    return derived_id("emit", run_id, step_key)


def wait_registration_id(run_id: str, step_key: str, attempt: int) -> str:
    """The event_id of a wait step's `wait.registered` (re-written when a pass is replayed)."""
    return derived_id("wait.registered", run_id, step_key, str(attempt))


def triggered_run_id(signal_event_id: str, app: str, workflow: str) -> str:
    """The run id a trigger starts for a signal: a re-delivered signal starts nothing twice,
    and two workflows triggered by one signal get two runs."""
    return derived_id("trigger", signal_event_id, app, workflow)


def idempotent_run_id(project: str, workflow: str, key: str, window_ms: int, window: int) -> str:
    """The one run of `workflow` for idempotency key `key` in window number `window` (the
    start's epoch milliseconds // `window_ms`)."""
    return derived_id("idempotency", project, workflow, key, str(window_ms), str(window))


def timer_message_id(run_id: str, step_key: str, attempt: int, kind: str) -> str:
    """The id of what a due timer writes (the sleep's step.completed, the retry's resume_run,
    the scheduled start_run, the wait's wait.ended). `kind` is the timer's kind as the
    processors name it; `step_key` is "" for a run's scheduled start."""
    return derived_id("timer", run_id, step_key, str(attempt), kind)


def wait_resolution_id(run_id: str, step_key: str, attempt: int) -> str:
    """The event_id of the `step.completed` that resolves a wait (by a signal or its timeout):
    one id for both outcomes, so whichever the signals agent writes first is the only one."""
    return derived_id("wait", run_id, step_key, str(attempt))
