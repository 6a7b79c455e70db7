"""The durable-workflow wire contract: signals- and flows-topic messages, run history in
commands, retry delays, deterministic ids and wait matching (docs/workflows.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from steplog.errors import InvalidEventError
from steplog.schemas import ids
from steplog.schemas.codec import (
    decode_command,
    decode_event,
    decode_flow,
    decode_flows_message,
    decode_signal,
    decode_signals_message,
    encode,
    validate_flows_message,
    validate_signals_message,
)
from steplog.schemas.commands import CancelRun, ResumeRun, StartRun, StepRecord
from steplog.schemas.events import RunScheduled, StepKind, StepSleeping, StepSleepingPayload
from steplog.schemas.flows import FlowDefinition, FlowStep, RetryPolicy, WorkflowDefinition
from steplog.schemas.golden import golden_flows_messages, golden_messages
from steplog.schemas.signals import (
    SIGNALS_MESSAGE_TYPES,
    Signal,
    TriggerRegistered,
    WaitEnded,
    WaitRegistered,
    resolve_match_path,
    wait_matches,
)
from steplog.schemas.statuses import StepStatus

GOLDEN = golden_messages()
FLOWS = golden_flows_messages()
TS = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _document(type_tag: str, **changes: Any) -> dict[str, Any]:
    """A golden message as a parsed JSON object, with `changes` applied."""
    message = GOLDEN[type_tag] if type_tag in GOLDEN else FLOWS[type_tag]
    document: dict[str, Any] = json.loads(encode(message))
    document.update(changes)
    return document


def _bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


def _refusal_of_signals_message(document: dict[str, Any]) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as caught:
        decode_signals_message(_bytes(document))
    return caught.value


# --- the signals topic ----------------------------------------------------------------------


@pytest.mark.parametrize("type_tag", SIGNALS_MESSAGE_TYPES)
def test_every_signals_topic_message_round_trips(type_tag: str) -> None:
    message = GOLDEN[type_tag]
    decoded = decode_signals_message(encode(message))
    assert decoded == message and type(decoded) is type(message)
    assert validate_signals_message(json.loads(encode(message))) == message


def test_the_four_kinds_on_the_signals_topic_are_the_signal_and_the_names_bookkeeping() -> None:
    assert set(SIGNALS_MESSAGE_TYPES) == {
        "signal", "wait.registered", "wait.ended", "trigger.registered"
    }


@pytest.mark.parametrize("type_tag", ["wait.registered", "wait.ended", "trigger.registered"])
def test_decode_signal_still_reads_only_signals(type_tag: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_signal(encode(GOLDEN[type_tag]))
    assert caught.value.field == "type"
    assert f"unknown signal type {type_tag!r}; expected one of signal" == caught.value.problem


def test_a_wait_registered_without_run_id_is_refused_naming_the_field() -> None:
    document = _document("wait.registered")
    del document["run_id"]
    error = _refusal_of_signals_message(document)
    assert (error.field, error.problem) == ("run_id", "required field is missing")


def test_an_unknown_signals_topic_type_lists_the_four_kinds() -> None:
    error = _refusal_of_signals_message(_document("wait.ended", type="wait.forgotten"))
    assert error.field == "type"
    assert "unknown signals-topic message type 'wait.forgotten'" in error.problem
    assert all(t in error.problem for t in SIGNALS_MESSAGE_TYPES)


def test_a_wait_ended_reason_is_timeout_or_cancelled() -> None:
    error = _refusal_of_signals_message(_document("wait.ended", reason="bored"))
    assert error.field == "reason"
    assert "'timeout'" in error.problem and "'cancelled'" in error.problem


def test_a_match_value_without_a_match_path_is_refused() -> None:
    error = _refusal_of_signals_message(_document("wait.registered", match=None))
    assert error.field == "match_value"
    assert "'ord_1042' given without a match path" in error.problem


@pytest.mark.parametrize("path", ["data..order_id", ".data", "data.", ""])
def test_a_malformed_match_path_is_refused(path: str) -> None:
    error = _refusal_of_signals_message(_document("wait.registered", match=path))
    assert error.field == "match"


def test_a_wait_without_match_may_omit_what_it_does_not_need() -> None:
    wait = WaitRegistered(
        event_id="e1", project="acme", name="order.approved", flow="checkout", run_id="r1",
        step_key="approval", ts=TS,
    )
    assert (wait.app, wait.attempt, wait.match, wait.match_value, wait.timeout_at) == (
        None, 1, None, None, None
    )


def test_a_trigger_names_the_app_and_workflow_it_starts() -> None:
    document = _document("trigger.registered")
    del document["app"]
    error = _refusal_of_signals_message(document)
    assert error.field == "app"
    assert isinstance(decode_signals_message(encode(GOLDEN["trigger.registered"])),
                      TriggerRegistered)


def test_signals_topic_messages_are_not_events() -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_event(encode(GOLDEN["wait.registered"]))
    assert caught.value.field == "type" and "'wait.registered'" in caught.value.problem


# --- wait matching --------------------------------------------------------------------------


def _wait(
    match: str | None = "data.order_id", match_value: JsonValue = "ord_1042"
) -> WaitRegistered:
    return WaitRegistered(
        event_id="w1", project="acme", name="order.approved", flow="checkout", run_id="r1",
        step_key="approval", match=match, match_value=match_value if match else None, ts=TS,
    )


def _signal(data: JsonValue, **changes: Any) -> Signal:
    fields: dict[str, Any] = {
        "event_id": "s1", "project": "acme", "name": "order.approved", "data": data, "ts": TS,
        **changes,
    }
    return Signal(**fields)


def test_resolve_match_path_walks_objects_and_array_indexes() -> None:
    document: JsonValue = {"data": {"items": [{"sku": "a"}, {"sku": "b"}], "none": None}}
    assert resolve_match_path(document, "data.items.1.sku") == (True, "b")
    assert resolve_match_path(document, "data.none") == (True, None)
    assert resolve_match_path(document, "data.missing") == (False, None)
    assert resolve_match_path(document, "data.items.2.sku") == (False, None)
    assert resolve_match_path(document, "data.items.sku") == (False, None)
    assert resolve_match_path(document, "data.none.deeper") == (False, None)


def test_a_signal_with_the_same_value_at_the_path_resolves_the_wait() -> None:
    assert wait_matches(_wait(), _signal({"order_id": "ord_1042", "approved": True}))
    assert not wait_matches(_wait(), _signal({"order_id": "ord_9999"}))


def test_a_wait_without_match_is_resolved_by_any_signal_of_its_name() -> None:
    assert wait_matches(_wait(match=None), _signal(None))
    assert not wait_matches(_wait(match=None), _signal(None, name="order.rejected"))
    assert not wait_matches(_wait(match=None), _signal(None, project="other"))


def test_an_absent_path_never_matches_even_a_null_value() -> None:
    assert not wait_matches(_wait(match_value=None), _signal({}))
    assert wait_matches(_wait(match_value=None), _signal({"order_id": None}))
    assert not wait_matches(_wait(match="nothing.here"), _signal({"order_id": "ord_1042"}))


def test_values_compare_as_json_not_as_python() -> None:
    assert not wait_matches(_wait(match_value=True), _signal({"order_id": 1}))
    assert not wait_matches(_wait(match_value=1), _signal({"order_id": True}))
    assert wait_matches(_wait(match_value=1), _signal({"order_id": 1.0}))
    assert wait_matches(_wait(match_value={"a": [1, "x"]}), _signal({"order_id": {"a": [1, "x"]}}))
    assert not wait_matches(_wait(match_value={"a": [1]}), _signal({"order_id": {"a": [True]}}))
    assert not wait_matches(_wait(match_value=[1]), _signal({"order_id": {"0": 1}}))


def test_the_signals_app_does_not_narrow_which_waits_it_resolves() -> None:
    assert wait_matches(_wait(), _signal({"order_id": "ord_1042"}, app="billing"))


def test_a_path_may_start_in_any_field_of_the_signal() -> None:
    assert wait_matches(_wait(match="name", match_value="order.approved"), _signal(None))


# --- the flows topic ------------------------------------------------------------------------


def test_flows_topic_messages_round_trip() -> None:
    for message in FLOWS.values():
        assert decode_flows_message(encode(message)) == message
        assert validate_flows_message(json.loads(encode(message))) == message


def test_decode_flow_still_reads_only_flow_definitions() -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_flow(encode(FLOWS["workflow.defined"]))
    assert caught.value.field == "type"
    assert "'workflow.defined'" in caught.value.problem


def test_a_workflow_definition_has_defaults_for_all_but_its_identity() -> None:
    workflow = WorkflowDefinition(project="acme", app="shop", name="order.process", ts=TS)
    assert workflow.triggers == []
    assert workflow.retries == RetryPolicy(
        attempts=4, initial_delay_ms=3000, max_delay_ms=300_000, multiplier=20.0, jitter=0.2
    )
    assert workflow.key == "acme/workflow/shop/order.process"


def test_duplicate_triggers_are_refused_naming_the_second() -> None:
    document = _document("workflow.defined", triggers=["a", "b", "a"])
    with pytest.raises(InvalidEventError) as caught:
        decode_flows_message(_bytes(document))
    assert caught.value.field == "triggers[2]"
    assert caught.value.problem == "'a' is listed twice"


@pytest.mark.parametrize("field", ["project", "app"])
def test_a_workflows_project_and_app_cannot_contain_a_slash(field: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_flows_message(_bytes(_document("workflow.defined", **{field: "a/b"})))
    assert caught.value.field == field
    assert "'a/b'" in caught.value.problem


def test_a_bad_retry_policy_is_refused_naming_the_nested_field() -> None:
    retries = {"initial_delay_ms": 10_000, "max_delay_ms": 1_000}
    with pytest.raises(InvalidEventError) as caught:
        decode_flows_message(_bytes(_document("workflow.defined", retries=retries)))
    assert caught.value.field == "retries.max_delay_ms"
    assert "below initial_delay_ms 10000" in caught.value.problem


@pytest.mark.parametrize(
    ("project", "slug", "field"),
    [("acme", "workflow/shop/x", "slug"), ("acme/workflow", "shop/x", "project")],
)
def test_a_flow_cannot_take_a_key_shaped_like_a_workflow_key(
    project: str, slug: str, field: str
) -> None:
    document = _document("flow.defined", project=project, slug=slug)
    with pytest.raises(InvalidEventError) as caught:
        decode_flow(_bytes(document))
    assert caught.value.field == field
    assert "reserved for workflow definitions" in caught.value.problem


def test_flows_may_still_use_slashes_and_the_word_workflow() -> None:
    for slug in ("workflows/x", "billing/workflow", "workflow"):
        definition = FlowDefinition(
            project="acme", slug=slug, steps=[FlowStep(sdk_step_key="s")], ts=TS
        )
        assert definition.key == f"acme/{slug}"


_SEGMENT = st.text(alphabet="aw/.-", min_size=1, max_size=12)


@given(
    flow_project=_SEGMENT,
    slug=st.one_of(_SEGMENT, _SEGMENT.map(lambda s: "workflow/" + s)),
    project=_SEGMENT,
    app=_SEGMENT,
    name=_SEGMENT,
)
def test_flow_and_workflow_keys_never_collide(
    flow_project: str, slug: str, project: str, app: str, name: str
) -> None:
    try:
        flow = FlowDefinition(
            project=flow_project, slug=slug, steps=[FlowStep(sdk_step_key="s")], ts=TS
        )
        workflow = WorkflowDefinition(project=project, app=app, name=name, ts=TS)
    except ValidationError:
        return
    assert flow.key != workflow.key


# --- retry delays ---------------------------------------------------------------------------


def test_the_default_delays_are_about_3_seconds_1_minute_then_5_minutes() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(attempt, 0.0) for attempt in (1, 2, 3, 4)] == [
        3_000, 60_000, 300_000, 300_000
    ]
    assert [policy.is_last_attempt(attempt) for attempt in (1, 3, 4, 5)] == [
        False, False, True, True
    ]


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_delays_never_decrease_and_never_pass_the_max(draw: float) -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=50_000, multiplier=1.7, jitter=0.5)
    delays = [policy.delay_ms(attempt, draw) for attempt in range(1, 40)]
    assert delays == sorted(delays)
    assert max(delays) <= 50_000
    assert delays[-1] == round(50_000 * (1 - 0.5 * draw))


def test_jitter_only_shortens_a_delay_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(jitter=0.2)
    for attempt in (1, 2, 3):
        undisturbed = policy.delay_ms(attempt, 0.0)
        for draw in (0.0, 0.25, 0.5, 0.999, 1.0):
            delay = policy.delay_ms(attempt, draw)
            assert undisturbed * 0.8 <= delay <= undisturbed
    assert RetryPolicy(jitter=0.0).delay_ms(2, 0.9) == 60_000


def test_a_huge_attempt_number_gives_the_max_without_overflowing() -> None:
    assert RetryPolicy().delay_ms(10**9, 0.0) == 300_000


def test_degenerate_policies_give_constant_delays() -> None:
    assert RetryPolicy(initial_delay_ms=0).delay_ms(5, 0.5) == 0
    assert RetryPolicy(multiplier=1.0).delay_ms(9, 0.0) == 3_000


@pytest.mark.parametrize(("attempt", "draw"), [(0, 0.5), (-1, 0.5), (1, -0.1), (1, 1.5)])
def test_delay_ms_refuses_arguments_outside_their_range(attempt: int, draw: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay_ms(attempt, draw)


@pytest.mark.parametrize(
    "changes",
    [{"attempts": 0}, {"multiplier": 0.5}, {"jitter": 1.5}, {"initial_delay_ms": -1}],
)
def test_a_retry_policy_refuses_values_outside_their_range(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(**changes)


# --- commands with history ------------------------------------------------------------------


def test_a_resume_carries_the_history_and_the_position_it_reflects() -> None:
    resume = GOLDEN["command.resume_run"]
    assert isinstance(resume, ResumeRun)
    assert (resume.app, resume.workflow) == ("shop", "checkout")
    assert (resume.history_partition, resume.history_offset) == (3, 1041)
    assert resume.history["charge"].output == {"charge_id": "ch_9a8b7c", "captured": True}
    assert resume.history["reserve-stock"].status is StepStatus.RETRYING
    assert decode_command(encode(resume)) == resume


def test_commands_default_to_no_history_and_no_app() -> None:
    common: dict[str, Any] = {"command_id": "c1", "project": "acme", "run_id": "r1", "ts": TS}
    start = StartRun(**common, workflow="checkout")
    resume = ResumeRun(**common, reason="timer")
    cancel = CancelRun(**common)
    for command in (start, resume):
        assert (command.history, command.history_partition, command.history_offset) == (
            {}, None, None
        )
    assert (resume.app, resume.workflow, cancel.app) == (None, None, None)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"history_offset": None}, "history_offset"),
        ({"history_partition": None}, "history_partition"),
    ],
)
def test_a_history_position_needs_partition_and_offset(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_command(_bytes(_document("command.resume_run", **changes)))
    assert caught.value.field == field
    assert "set together" in caught.value.problem


@pytest.mark.parametrize("status", ["missing", "stuck"])
def test_a_step_record_refuses_derived_statuses(status: str) -> None:
    document = _document("command.resume_run")
    document["history"]["charge"]["status"] = status
    with pytest.raises(InvalidEventError) as caught:
        decode_command(_bytes(document))
    assert caught.value.field == "history.charge.status"
    assert caught.value.problem.startswith("derived by the views and never sent")
    assert "skipped" in caught.value.problem and caught.value.problem.endswith(f"got {status!r}")
    with pytest.raises(ValidationError, match="derived"):
        StepRecord(kind=StepKind.RUN, status=StepStatus(status))


# --- events the workflows need --------------------------------------------------------------


def test_a_sleep_says_whether_it_was_a_duration_or_an_absolute_time() -> None:
    sleeping = GOLDEN["step.sleeping"]
    assert isinstance(sleeping, StepSleeping) and sleeping.payload.kind is StepKind.SLEEP
    document = _document("step.sleeping")
    document["payload"]["kind"] = "sleep_until"
    event = decode_event(_bytes(document))
    assert isinstance(event, StepSleeping) and event.payload.kind is StepKind.SLEEP_UNTIL
    document["payload"]["kind"] = "run"
    with pytest.raises(InvalidEventError) as caught:
        decode_event(_bytes(document))
    assert caught.value.field == "payload.kind"
    assert caught.value.problem == "not a sleep; expected one of sleep, sleep_until, got 'run'"
    with pytest.raises(ValidationError):
        StepSleepingPayload(wake_at=TS, kind=StepKind.EMIT)


def test_a_scheduled_run_names_the_app_whose_worker_starts_it() -> None:
    scheduled = GOLDEN["run.scheduled"]
    assert isinstance(scheduled, RunScheduled) and scheduled.payload.app == "shop"


# --- deterministic ids ----------------------------------------------------------------------


def test_derived_ids_are_uuid5_over_the_parts_joined_by_unit_separators() -> None:
    assert ids.DERIVED_ID_NAMESPACE == uuid5(NAMESPACE_URL, "https://steplog.dev/ns/derived-id")
    expected = uuid5(ids.DERIVED_ID_NAMESPACE, "child\x1frun_1\x1ffraud").hex
    assert ids.derived_id("child", "run_1", "fraud") == expected
    # A test vector for other SDKs: this value must never change.
    assert expected == "fdceab81a6b25909b516d484cba4e402"
    assert len(expected) == 32 and UUID(hex=expected).version == 5


def test_derived_ids_are_stable_and_distinct_for_different_parts() -> None:
    assert ids.derived_id("a", "b") == ids.derived_id("a", "b")
    variants = [("a", "b"), ("ab",), ("b", "a"), ("a", "b", ""), ("a", ""), ("a",), ("A", "b")]
    assert len({ids.derived_id(*parts) for parts in variants}) == len(variants)


def test_derived_id_refuses_no_parts_and_parts_with_the_separator() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        ids.derived_id()
    with pytest.raises(ValueError, match="part 1"):
        ids.derived_id("a", "b\x1fc")


def test_each_producer_derives_its_id_from_the_documented_parts() -> None:
    assert ids.child_run_id("r1", "fraud") == ids.derived_id("child", "r1", "fraud")
    assert ids.emitted_signal_id("r1", "notify") == ids.derived_id("emit", "r1", "notify")
    assert ids.wait_registration_id("r1", "approval", 2) == ids.derived_id(
        "wait.registered", "r1", "approval", "2"
    )
    assert ids.triggered_run_id("e1", "shop", "checkout") == ids.derived_id(
        "trigger", "e1", "shop", "checkout"
    )
    assert ids.timer_message_id("r1", "settle", 1, "sleep") == ids.derived_id(
        "timer", "r1", "settle", "1", "sleep"
    )
    assert ids.wait_resolution_id("r1", "approval", 1) == ids.derived_id(
        "wait", "r1", "approval", "1"
    )


def test_ids_for_different_purposes_about_the_same_step_differ() -> None:
    derived = {
        ids.child_run_id("r1", "s"),
        ids.emitted_signal_id("r1", "s"),
        ids.wait_registration_id("r1", "s", 1),
        ids.wait_resolution_id("r1", "s", 1),
        ids.timer_message_id("r1", "s", 1, "sleep"),
        ids.timer_message_id("r1", "s", 1, "retry"),
        ids.timer_message_id("r1", "s", 2, "retry"),
    }
    assert len(derived) == 7


def test_one_signal_triggering_two_workflows_starts_two_runs() -> None:
    assert ids.triggered_run_id("e1", "shop", "a") != ids.triggered_run_id("e1", "shop", "b")
    assert ids.triggered_run_id("e1", "shop", "a") != ids.triggered_run_id("e1", "risk", "a")
    assert ids.triggered_run_id("e1", "shop", "a") != ids.triggered_run_id("e2", "shop", "a")


def test_wait_ended_and_trigger_registered_build_in_python() -> None:
    ended = WaitEnded(
        event_id=ids.timer_message_id("r1", "approval", 1, "wait_timeout"), project="acme",
        name="order.approved", run_id="r1", flow="checkout", step_key="approval",
        reason="cancelled", ts=TS,
    )
    assert decode_signals_message(encode(ended)) == ended
