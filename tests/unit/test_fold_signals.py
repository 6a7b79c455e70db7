"""The signals agent's logic over in-memory name states: triggers, waits, their order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import JsonValue

from steplog.processors.fold.effects import Effect, SendCommand, WriteEvent
from steplog.processors.fold.signals import (
    RECENT_IDS,
    NameTriggers,
    NameWaits,
    apply_signals_message,
)
from steplog.schemas.base import TriggerInfo
from steplog.schemas.commands import StartRun
from steplog.schemas.events import (
    RunCancelled,
    RunScheduled,
    StepCompleted,
    StepCompletedPayload,
)
from steplog.schemas.ids import (
    derived_id,
    idempotent_run_id,
    triggered_run_id,
    wait_resolution_id,
)
from steplog.schemas.signals import (
    Idempotency,
    Signal,
    SignalsMessage,
    TriggerRegistered,
    WaitEnded,
    WaitRegistered,
)

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
NAME = "order.approved"


class Name:
    """One event name's states, fed messages the way the agent feeds them."""

    def __init__(self) -> None:
        self.waits = NameWaits()
        self.triggers = NameTriggers()

    def feed(self, *messages: SignalsMessage) -> list[Effect]:
        effects: list[Effect] = []
        for message in messages:
            effects += apply_signals_message(self.waits, self.triggers, message, NOW)
        return effects


def signal(event_id: str, data: JsonValue = None, app: str | None = None,
           project: str = "acme") -> Signal:
    return Signal(event_id=event_id, project=project, name=NAME, data=data, app=app, ts=T0)


def trigger(app: str, workflow: str, project: str = "acme") -> TriggerRegistered:
    return TriggerRegistered(event_id=f"t-{app}-{workflow}", project=project, name=NAME,
                             app=app, workflow=workflow, ts=T0)


def wait(run_id: str, match: str | None = None, match_value: JsonValue = None,
         event_id: str | None = None, **fields: Any) -> WaitRegistered:
    return WaitRegistered(event_id=event_id or f"w-{run_id}", project="acme", name=NAME,
                          app="shop", flow="order.process", run_id=run_id,
                          step_key="approval", match=match, match_value=match_value, ts=T0,
                          **fields)


def ended(run_id: str, reason: Literal["timeout", "cancelled"]) -> WaitEnded:
    return WaitEnded(event_id=f"e-{run_id}-{reason}", project="acme", name=NAME, run_id=run_id,
                     flow="order.process", step_key="approval", reason=reason, ts=NOW)


def completion(run_id: str, output: JsonValue, timed_out: bool = False) -> WriteEvent:
    return WriteEvent(StepCompleted(
        event_id=wait_resolution_id(run_id, "approval", 1), project="acme",
        flow="order.process", run_id=run_id, step_key="approval", attempt=1, ts=NOW,
        payload=StepCompletedPayload(output=output, timed_out=timed_out)))


# --- conditions ----------------------------------------------------------------------------------


def test_a_wait_with_a_condition_is_resolved_only_by_a_signal_that_meets_it() -> None:
    name = Name()
    name.feed(wait("run-1", condition="event.data.amount > 100 and event.data.currency == 'EUR'"))
    assert name.feed(signal("s-1", {"amount": 50, "currency": "EUR"}),
                     signal("s-2", {"amount": 150, "currency": "USD"}),
                     signal("s-3", {"currency": "EUR"})) == []
    paid: dict[str, JsonValue] = {"amount": 150, "currency": "EUR"}
    assert name.feed(signal("s-4", paid)) == [completion("run-1", paid)]


def test_a_condition_that_does_not_compile_never_resolves_its_wait() -> None:
    name = Name()
    name.feed(wait("run-1", condition="event.data.amount >"), wait("run-2"))
    assert name.feed(signal("s-1", {"amount": 150})) == [completion("run-2", {"amount": 150})]
    assert "w-run-1" in name.waits.waits


def test_a_cancel_on_registration_cancels_its_run_instead_of_completing_a_step() -> None:
    name = Name()
    name.feed(wait("run-1", match="data.order_id", match_value="o-1", cancels_run=True))
    assert name.feed(signal("s-1", {"order_id": "o-2"})) == []
    (effect,) = name.feed(signal("s-2", {"order_id": "o-1"}))
    assert isinstance(effect, WriteEvent) and isinstance(effect.event, RunCancelled)
    assert (effect.event.run_id, effect.event.seq) == ("run-1", 0)
    assert effect.event.payload.reason == "cancel_on: event 'order.approved' (s-2)"
    assert name.waits.waits == {}


def test_a_trigger_with_idempotency_schedules_one_run_per_key_and_window() -> None:
    name = Name()
    rule = Idempotency(key="data.order_id", window_ms=3_600_000)
    name.feed(TriggerRegistered(event_id="t-1", project="acme", name=NAME, app="shop",
                                workflow="order.process", idempotency=rule, ts=T0))
    sent: list[JsonValue] = [{"order_id": "o-1"}, {"order_id": "o-1", "n": 2}, {"order_id": "o-2"}]
    first, again, other = (name.feed(signal(f"s-{n}", data))[0] for n, data in enumerate(sent))
    assert isinstance(first, WriteEvent) and isinstance(first.event, RunScheduled)
    assert isinstance(again, WriteEvent) and isinstance(other, WriteEvent)
    window = int(T0.timestamp() * 1000) // 3_600_000
    assert first.event.run_id == idempotent_run_id("acme", "order.process", "o-1", 3_600_000,
                                                   window)
    # The same event id: the fold keeps the first run.scheduled and drops the second.
    assert (again.event.run_id, again.event.event_id) == (first.event.run_id, first.event.event_id)
    assert other.event.run_id != first.event.run_id
    assert first.event.payload.app == "shop" and first.event.payload.input == {"order_id": "o-1"}
    (keyless,) = name.feed(signal("s-9", {"id": 1}))  # no key: a run per signal, as before
    assert isinstance(keyless, SendCommand)
    assert NameTriggers.from_bytes(name.triggers.to_bytes()) == name.triggers


# --- triggers ----------------------------------------------------------------------------------


def test_a_signal_starts_a_run_of_each_workflow_triggered_by_its_name() -> None:
    name = Name()
    name.feed(trigger("shop", "order.process"), trigger("audit", "order.log"))
    effects = name.feed(signal("sig-1", data={"id": 7}))

    run_ids = [triggered_run_id("sig-1", "audit", "order.log"),
               triggered_run_id("sig-1", "shop", "order.process")]
    assert effects == [
        SendCommand(StartRun(command_id=derived_id("start", run_id), project="acme",
                             run_id=run_id, ts=T0, workflow=workflow, app=app,
                             input={"id": 7}, trigger=TriggerInfo(name=NAME, event_id="sig-1")))
        for run_id, (app, workflow) in zip(run_ids, [("audit", "order.log"),
                                                     ("shop", "order.process")], strict=True)
    ]


def test_a_signal_naming_an_app_starts_only_that_apps_workflows() -> None:
    name = Name()
    name.feed(trigger("shop", "order.process"), trigger("audit", "order.log"))
    (effect,) = name.feed(signal("sig-1", app="audit"))
    assert isinstance(effect, SendCommand) and isinstance(effect.command, StartRun)
    assert effect.command.workflow == "order.log"


def test_triggers_are_per_project_and_registering_twice_is_one_trigger() -> None:
    name = Name()
    name.feed(trigger("shop", "order.process"), trigger("shop", "order.process"),
              trigger("shop", "order.process", project="other"))
    assert len(name.feed(signal("sig-1"))) == 1


def test_a_signal_before_the_trigger_starts_nothing() -> None:
    name = Name()
    assert name.feed(signal("sig-1"), trigger("shop", "order.process")) == []


def test_a_signal_delivered_again_starts_nothing_twice() -> None:
    name = Name()
    name.feed(trigger("shop", "order.process"))
    assert len(name.feed(signal("sig-1"))) == 1
    assert name.feed(signal("sig-1")) == []


# --- waits -------------------------------------------------------------------------------------


def test_a_signal_resolves_every_matching_wait_once() -> None:
    name = Name()
    name.feed(wait("run-1"), wait("run-2", match="data.order", match_value=2),
              wait("run-3", match="data.order", match_value=3))
    effects = name.feed(signal("sig-1", data={"order": 2}))
    assert effects == [completion("run-1", {"order": 2}), completion("run-2", {"order": 2})]
    assert list(name.waits.waits) == ["w-run-3"]
    assert name.feed(signal("sig-2", data={"order": 2})) == []


def test_a_registration_delivered_twice_is_one_wait() -> None:
    name = Name()
    name.feed(wait("run-1"), wait("run-1"))
    assert name.feed(signal("sig-1", data=1)) == [completion("run-1", 1)]


def test_a_signal_before_the_wait_does_not_resolve_it() -> None:
    name = Name()
    assert name.feed(signal("sig-1"), wait("run-1")) == []
    # Not even when the signal is delivered again after the wait: it was sent before.
    assert name.feed(signal("sig-1")) == []
    assert list(name.waits.waits) == ["w-run-1"]


def test_a_timeout_resolves_a_registered_wait_to_null() -> None:
    name = Name()
    name.feed(wait("run-1"))
    assert name.feed(ended("run-1", "timeout")) == [completion("run-1", None, timed_out=True)]
    assert name.waits.waits == {}


def test_whichever_of_signal_and_timeout_comes_first_resolves_the_wait() -> None:
    name = Name()
    name.feed(wait("run-1"))
    assert name.feed(signal("sig-1", data="yes")) == [completion("run-1", "yes")]
    assert name.feed(ended("run-1", "timeout")) == []

    name = Name()
    name.feed(wait("run-1"), ended("run-1", "timeout"))
    assert name.feed(signal("sig-1", data="late")) == []


def test_a_cancelled_wait_is_removed_without_resolving_its_step() -> None:
    name = Name()
    name.feed(wait("run-1"))
    assert name.feed(ended("run-1", "cancelled")) == []
    assert name.feed(signal("sig-1")) == []


def test_a_late_duplicate_of_a_resolved_registration_does_not_bring_the_wait_back() -> None:
    name = Name()
    name.feed(wait("run-1"), signal("sig-1"))
    assert name.feed(wait("run-1"), signal("sig-2")) == []


def test_a_wait_registered_under_another_id_is_still_ended_by_its_step() -> None:
    name = Name()
    name.feed(wait("run-1", event_id="not-derived"))
    assert name.feed(ended("run-1", "timeout")) == [completion("run-1", None, timed_out=True)]


def test_only_the_most_recent_ids_are_remembered() -> None:
    waits = NameWaits()
    for n in range(RECENT_IDS + 10):
        waits.remember(f"id-{n}")
    assert len(waits.recent) == len(waits.recent_set) == RECENT_IDS
    assert "id-0" not in waits.recent_set and f"id-{RECENT_IDS + 9}" in waits.recent_set


def test_name_states_round_trip_through_bytes() -> None:
    name = Name()
    name.feed(trigger("shop", "order.process"),
              wait("run-1", match="data.order", match_value={"id": [1, 2]},
                   timeout_at=NOW + timedelta(hours=1)),
              signal("sig-1", data={"order": 9}))
    waits = NameWaits.from_bytes(name.waits.to_bytes())
    triggers = NameTriggers.from_bytes(name.triggers.to_bytes())
    assert waits.waits == name.waits.waits and list(waits.recent) == ["sig-1"]
    assert waits.recent_set == {"sig-1"}
    assert triggers == name.triggers
