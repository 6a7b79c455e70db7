"""The signals' fold: per event name, the registered triggers and the waiting runs.

Pure: `apply_signals_message(waits, triggers, message, now)` updates the two states of the
message's name in place and returns the effects (`SendCommand(start_run)`, `WriteEvent`). The
host (`signals_host.SignalsHost`, fed by a `stateful_consumer.StatefulConsumer`) reads the signals
topic in batches, keeps the states in two stores keyed by the event name (`waits`, `triggers`:
`state_store.StateStore`), carries out the effects, waits for Kafka's acknowledgements and only
then stores the states: a crash in between re-reads the batch and writes the same messages
again, with the same derived ids, which their consumers drop.

One partition holds all of a name's messages, so their order is the log's, and it decides:

- `trigger.registered`: the (project, app, workflow) starts a run for each later signal; with
  `idempotency`, one run per key and window: a `run.scheduled` due at once, with ids derived
  from the key (`_start_once`), so that the fold keeps the first and drops the rest.
- `wait.registered`: the run waits (kept by its event_id, so a re-registration by a replayed
  pass is the same wait).
- `signal`: every trigger of the name in the signal's project (only its `app`'s, when the
  signal names one) gets `start_run` with run id `triggered_run_id(signal, app, workflow)`;
  every registered wait with `wait_matches` (and whose `condition`, if it has one, holds for
  the signal) gets `step.completed(output = signal.data)` with event id
  `wait_resolution_id(run, step, attempt)`, and is removed (steplog/waits.py).
- a wait with `cancels_run` (a workflow's `cancel_on`, producers/cancel_on.py) is resolved the
  same way, but writes `run.cancelled` (id `derived_id("cancel-on", run, step key)`).
- `wait.ended`: if the wait is still registered, it is removed and, for a timeout,
  `step.completed(output null, timed_out)` is written with the same `wait_resolution_id` (so a
  wait resolves once, by whichever came first); for a cancel, nothing.

A signal already seen (the same event_id, among the last `RECENT_IDS` of the name) is dropped:
a client's re-sent signal landing after a new wait.registered must not resolve that wait,
since the signal was sent before the run parked. Resolved waits' registration ids are
remembered the same way, so a late duplicate registration does not bring a wait back.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun
from steplog.schemas.events import (
    RunCancelled,
    RunCancelledPayload,
    RunScheduled,
    RunScheduledPayload,
    StepCompleted,
    StepCompletedPayload,
)
from steplog.schemas.ids import (
    derived_id,
    idempotent_run_id,
    triggered_run_id,
    wait_registration_id,
    wait_resolution_id,
)
from steplog.schemas.signals import (
    Idempotency,
    Signal,
    SignalsMessage,
    TriggerRegistered,
    WaitEnded,
    WaitRegistered,
    resolve_match_path,
)
from steplog.waits import signal_resolves

from .effects import Effect, SendCommand, WriteEvent

__all__ = [
    "NameTriggers",
    "NameWaits",
    "RECENT_IDS",
    "Trigger",
    "apply_signals_message",
]

RECENT_IDS: Final = 1_000
"""Message ids remembered per name to drop duplicates (signals, ended waits' registrations)."""

Trigger = tuple[str, str, str]
"""(project, app, workflow)."""

WaitStep = tuple[str, str, str, int]
"""(project, run_id, step_key, attempt): the step a wait resolves."""


@dataclass
class NameWaits:
    """The waiting runs of one event name, and the ids recently seen on it."""

    waits: dict[str, WaitRegistered] = field(default_factory=dict)
    """By the registration's event_id, in registration order."""
    recent: deque[str] = field(default_factory=deque)
    recent_set: set[str] = field(default_factory=set)

    def remember(self, message_id: str) -> None:
        if message_id in self.recent_set:
            return
        self.recent.append(message_id)
        self.recent_set.add(message_id)
        while len(self.recent) > RECENT_IDS:
            self.recent_set.discard(self.recent.popleft())

    def find(self, step: WaitStep) -> str | None:
        """The registration id of the wait of `step`, if it is registered."""
        derived = wait_registration_id(step[1], step[2], step[3])
        held = self.waits.get(derived)
        if held is not None and (held.project, held.run_id, held.step_key, held.attempt) == step:
            return derived
        # A registration under another id (a producer that does not derive it): look for it.
        for registration_id, wait in self.waits.items():
            if (wait.project, wait.run_id, wait.step_key, wait.attempt) == step:
                return registration_id
        return None

    def to_bytes(self) -> bytes:
        stored = _StoredWaits(waits=list(self.waits.values()), recent=list(self.recent))
        return stored.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> NameWaits:
        stored = _StoredWaits.model_validate_json(data)
        recent = deque(stored.recent)
        return cls({wait.event_id: wait for wait in stored.waits}, recent, set(recent))


@dataclass
class NameTriggers:
    """The workflows one event name starts."""

    triggers: set[Trigger] = field(default_factory=set)
    idempotency: dict[Trigger, Idempotency] = field(default_factory=dict)
    """The triggers whose workflow starts one run per key (the latest registration's rule)."""

    def to_bytes(self) -> bytes:
        stored = _StoredTriggers(
            triggers=sorted(self.triggers),
            idempotency=[(*t, rule) for t, rule in sorted(self.idempotency.items())],
        )
        return stored.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> NameTriggers:
        stored = _StoredTriggers.model_validate_json(data)
        rules = {(p, a, w): rule for p, a, w, rule in stored.idempotency}
        return cls(set(stored.triggers), rules)


# The stored states follow the wire models' rule (schemas/COMPATIBILITY.md): a field added by a
# newer build is ignored, so a partition handed back to a processor not yet upgraded (during a
# rolling upgrade) still reads the state the newer one wrote.
class _StoredWaits(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    format: Literal[1] = 1
    waits: list[WaitRegistered]
    recent: list[str]


class _StoredTriggers(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    format: Literal[1] = 1
    triggers: list[tuple[str, str, str]]
    idempotency: list[tuple[str, str, str, Idempotency]] = []


def apply_signals_message(
    waits: NameWaits, triggers: NameTriggers, message: SignalsMessage, now: datetime
) -> list[Effect]:
    """Apply one message of the name to its states (in place); the effects, in order."""
    if isinstance(message, TriggerRegistered):
        trigger = (message.project, message.app, message.workflow)
        triggers.triggers.add(trigger)
        if message.idempotency is None:
            triggers.idempotency.pop(trigger, None)
        else:
            triggers.idempotency[trigger] = message.idempotency
        return []
    if isinstance(message, WaitRegistered):
        if message.event_id not in waits.waits and message.event_id not in waits.recent_set:
            waits.waits[message.event_id] = message
        return []
    if isinstance(message, WaitEnded):
        return _end_wait(waits, message, now)
    if message.event_id in waits.recent_set:
        return []
    waits.remember(message.event_id)
    return _start_triggered(triggers, message) + _resolve_waits(waits, message, now)


def _start_triggered(triggers: NameTriggers, signal: Signal) -> list[Effect]:
    effects: list[Effect] = []
    for project, app, workflow in sorted(triggers.triggers):
        if project != signal.project or (signal.app is not None and app != signal.app):
            continue
        rule = triggers.idempotency.get((project, app, workflow))
        once = None if rule is None else _start_once(rule, project, app, workflow, signal)
        if once is not None:
            effects.append(once)
            continue
        run_id = triggered_run_id(signal.event_id, app, workflow)
        effects.append(
            SendCommand(
                StartRun(
                    command_id=derived_id("start", run_id),
                    project=project,
                    run_id=run_id,
                    ts=signal.ts,
                    workflow=workflow,
                    app=app,
                    input=signal.data,
                    trigger=TriggerInfo(name=signal.name, event_id=signal.event_id),
                )
            )
        )
    return effects


def _start_once(
    rule: Idempotency, project: str, app: str, workflow: str, signal: Signal
) -> WriteEvent | None:
    """The start of a workflow with idempotency: a run.scheduled (due at the signal's time)
    whose run id and event id derive from the key and window, as `client.start(...,
    idempotency_key=)` makes them (a string key is used as is, so both meet); a second signal
    of the key in the window is a duplicate the fold drops. None when the signal has no key."""
    found, value = resolve_match_path(
        signal.model_dump(mode="json", include={"name", "data"}), rule.key
    )
    if not found:
        return None
    key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    window = int(signal.ts.timestamp() * 1000) // rule.window_ms
    run_id = idempotent_run_id(project, workflow, key, rule.window_ms, window)
    return WriteEvent(
        RunScheduled(
            event_id=derived_id("idempotent-start", run_id),
            project=project,
            flow=workflow,
            run_id=run_id,
            ts=signal.ts,
            payload=RunScheduledPayload(
                start_at=signal.ts,
                app=app,
                input=signal.data,
                trigger=TriggerInfo(name=signal.name, event_id=signal.event_id),
            ),
        )
    )


def _resolve_waits(waits: NameWaits, signal: Signal, now: datetime) -> list[Effect]:
    matched = [key for key, wait in waits.waits.items() if signal_resolves(wait, signal)]
    effects: list[Effect] = []
    for registration_id in matched:
        wait = waits.waits.pop(registration_id)
        waits.remember(registration_id)
        if wait.cancels_run:
            effects.append(_cancel(wait, signal, now))
        else:
            effects.append(_complete(wait.project, wait.flow, wait.run_id, wait.step_key,
                                     wait.attempt, now, output=signal.data))
    return effects


def _cancel(rule: WaitRegistered, signal: Signal, now: datetime) -> WriteEvent:
    # seq 0, as every run event the processors write: an end the worker wrote first outranks it.
    return WriteEvent(
        RunCancelled(
            event_id=derived_id("cancel-on", rule.run_id, rule.step_key),
            project=rule.project,
            flow=rule.flow,
            run_id=rule.run_id,
            ts=now,
            payload=RunCancelledPayload(
                reason=f"cancel_on: event {signal.name!r} ({signal.event_id})"
            ),
        )
    )


def _end_wait(waits: NameWaits, ended: WaitEnded, now: datetime) -> list[Effect]:
    registration_id = waits.find((ended.project, ended.run_id, ended.step_key, ended.attempt))
    if registration_id is None:  # resolved by a signal first, or never registered
        return []
    del waits.waits[registration_id]
    waits.remember(registration_id)
    if ended.reason != "timeout":
        return []
    return [_complete(ended.project, ended.flow, ended.run_id, ended.step_key, ended.attempt,
                      now, output=None, timed_out=True)]


def _complete(
    project: str,
    flow: str,
    run_id: str,
    step_key: str,
    attempt: int,
    now: datetime,
    *,
    output: JsonValue,
    timed_out: bool = False,
) -> WriteEvent:
    return WriteEvent(
        StepCompleted(
            event_id=wait_resolution_id(run_id, step_key, attempt),
            project=project,
            flow=flow,
            run_id=run_id,
            step_key=step_key,
            attempt=attempt,
            ts=now,
            payload=StepCompletedPayload(output=output, timed_out=timed_out),
        )
    )
