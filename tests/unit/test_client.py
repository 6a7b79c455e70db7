"""The instrumentation client and run handle, against an in-memory sink.

Three things are held here: the hand-written event bytes decode to exactly the models the
pydantic path builds; `run.step` passes results and exceptions through untouched while
recording them; and a failure to send never replaces what the wrapped code returned or raised.
"""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import steplog
from steplog.errors import EventTooLargeError, InvalidEventError, MetadataError, SendError
from steplog.producers import event_bytes
from steplog.producers.client import Client
from steplog.producers.event_bytes import (
    RunEventBytes,
    encode_json,
    encode_metadata,
    utc_timestamp,
)
from steplog.producers.metadata import REDACTED, clean_metadata
from steplog.producers.sink import MemorySink
from steplog.schemas.base import ErrorInfo
from steplog.schemas.codec import decode_event, encode
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunCompletedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepKind,
    StepSkipped,
    StepSkippedPayload,
    StepStarted,
    StepStartedPayload,
)


def make_client(**options: Any) -> tuple[Client, MemorySink]:
    sink = options.pop("sink", None) or MemorySink()
    return Client(project="shop", sink=sink, **options), sink


def events_of(sink: MemorySink) -> list[Event]:
    return sink.events()


class ChargeDeclined(Exception):
    pass


def charge_card(cart: list[int]) -> int:
    return sum(cart)


def decline(cart: list[int]) -> int:
    raise ChargeDeclined(f"card declined for {sum(cart)}")


# --- the fast path is the slow path ---------------------------------------------------------

# Metadata that exercises the encoder: unicode keys and values, escapes, big ints, floats of
# every spelling, booleans and null.
AWKWARD_METADATA: dict[str, object] = {
    "région": "eu-west-1",
    "注文": "ord_1042 ✓",
    "quote\"and\\backslash": "line\nbreak\ttab\u2028sep\x00nul",
    "big": 2**70,
    "negative": -(2**63),
    "ratio": 0.1,
    "tiny": 1.5e-7,
    "huge": 1e300,
    "zero": -0.0,
    "ok": True,
    "cached": False,
    "missing": None,
}


def _common(decoded: Event) -> dict[str, Any]:
    # The values the fast path chose (id, time, order) taken from its own event, so that the
    # model built here differs only where the encoding would.
    return dict(
        event_id=decoded.event_id,
        project=decoded.project,
        flow=decoded.flow,
        run_id=decoded.run_id,
        attempt=decoded.attempt,
        ts=decoded.ts,
        seq=decoded.seq,
    )


@pytest.mark.parametrize("metadata", [{}, {"order_id": "ord_1", "items": 3}, AWKWARD_METADATA])
def test_fast_step_started_decodes_to_the_model_the_slow_path_builds(
    metadata: dict[str, object],
) -> None:
    writer = RunEventBytes("shop", "checkout", "req_123")
    cleaned = clean_metadata(metadata)
    value = writer.step_started(2, 7, json.dumps("charge-card"), encode_metadata(cleaned))
    decoded = decode_event(value)
    expected = StepStarted(
        **_common(decoded),
        step_key="charge-card",
        payload=StepStartedPayload(kind=StepKind.INSTRUMENTED, metadata=cleaned),
    )
    assert decoded == expected
    assert (decoded.attempt, decoded.seq) == (2, 7)
    if not any(isinstance(v, float) for v in metadata.values()):
        # Floats aside (1.5e-07 vs 1.5e-7), the bytes are the codec's own, byte for byte.
        assert value == encode(expected)


@pytest.mark.parametrize(
    ("output", "duration_ms"),
    [
        (None, 0.0),
        ({"charge_id": "ch_1", "captured": True, "amount": 2**64}, 12.5),
        (["ünïcödé", 1, 2.5, None, {"nested": [True]}], 1e-05),
        ("a string", 3600000.123456),
    ],
)
def test_fast_step_completed_decodes_to_the_model_the_slow_path_builds(
    output: Any, duration_ms: float
) -> None:
    writer = RunEventBytes("shop", "checkout", "req_123")
    value = writer.step_completed(
        1, 3, json.dumps("charge-card"), duration_ms, encode_json(output), "{}"
    )
    decoded = decode_event(value)
    expected = StepCompleted(
        **_common(decoded),
        step_key="charge-card",
        payload=StepCompletedPayload(output=output, duration_ms=duration_ms),
    )
    assert decoded == expected


@pytest.mark.parametrize(
    ("stack", "message"),
    [
        (None, "card declined"),
        ('Traceback (most recent call last):\n  File "shop.py", line 1\nKeyError: \'x\'\n', ""),
        ("stack with \"quotes\", \\backslashes\\, tabs\t and ✓\n", "message\nover lines ✓"),
    ],
)
def test_fast_step_failed_decodes_to_the_model_the_slow_path_builds(
    stack: str | None, message: str
) -> None:
    writer = RunEventBytes("shop", "checkout", "req_123")
    value = writer.step_failed(
        3, 9, json.dumps("charge-card"), 250.5, "ChargeDeclined", message, stack, "{}"
    )
    decoded = decode_event(value)
    expected = StepFailed(
        **_common(decoded),
        step_key="charge-card",
        payload=StepFailedPayload(
            error=ErrorInfo(type="ChargeDeclined", message=message, stack=stack),
            duration_ms=250.5,
        ),
    )
    assert decoded == expected
    assert value == encode(expected)


@pytest.mark.parametrize("reason", [None, "no coupon on the order ✓"])
def test_fast_step_skipped_and_run_completed_decode_to_the_slow_models(reason: str | None) -> None:
    writer = RunEventBytes("shöp", "checkout/eu", "req \"123\"")
    skipped = writer.step_skipped(1, 4, json.dumps("apply-coupon"), reason, '{"items":0}')
    decoded = decode_event(skipped)
    expected_skip = StepSkipped(
        **_common(decoded),
        step_key="apply-coupon",
        payload=StepSkippedPayload(reason=reason, metadata={"items": 0}),
    )
    assert decoded == expected_skip and skipped == encode(expected_skip)

    completed = writer.run_completed(5, encode_json({"status": "shipped"}))
    decoded_run = decode_event(completed)
    expected_run = RunCompleted(
        **_common(decoded_run), payload=RunCompletedPayload(output={"status": "shipped"})
    )
    assert decoded_run == expected_run and completed == encode(expected_run)


def test_a_run_step_sends_the_events_the_pydantic_path_would_build() -> None:
    client, sink = make_client(record_output=True)
    run = client.run("checkout", run_id="req_123")
    run.step("charge-card", charge_card, [20, 22], metadata={"région": "eu", "token": "t0k"})
    started, completed = events_of(sink)
    assert started == StepStarted(
        **_common(started),
        step_key="charge-card",
        payload=StepStartedPayload(metadata={"région": "eu", "token": REDACTED}),
    )
    assert isinstance(completed, StepCompleted)
    assert completed == StepCompleted(
        **_common(completed),
        step_key="charge-card",
        payload=StepCompletedPayload(output=42, duration_ms=completed.payload.duration_ms),
    )


def test_timestamps_are_aware_with_microseconds_across_second_boundaries() -> None:
    for ns in (1_700_000_000_000_000_000, 1_700_000_000_999_999_999, 1_700_000_001_000_001_000):
        text = utc_timestamp(ns)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert parsed == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
        assert text.endswith("Z") and len(text.split(".")[1]) == 7


def test_event_timestamps_are_now() -> None:
    client, sink = make_client()
    before = datetime.now(UTC)
    client.run("checkout", run_id="r").step("a", lambda: None)
    after = datetime.now(UTC)
    for event in events_of(sink):
        assert event.ts.tzinfo is not None
        assert before - timedelta(milliseconds=1) <= event.ts <= after + timedelta(milliseconds=1)


def test_event_ids_are_unique_and_a_forked_child_draws_a_new_prefix() -> None:
    ids = {event_bytes.fast_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    before = event_bytes.fast_event_id()
    event_bytes._draw_id_prefix()  # what os.register_at_fork runs in a child
    after = event_bytes.fast_event_id()
    assert before[:20] != after[:20]


# --- run.step: results and exceptions pass through ------------------------------------------


def test_creating_a_run_sends_nothing() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    assert sink.messages == [] and run.run_id == "req_123"


def test_step_returns_the_functions_value_and_records_started_then_completed() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    cart = [10, 32]
    assert run.step("charge-card", charge_card, cart) == 42
    started, completed = events_of(sink)
    assert isinstance(started, StepStarted) and isinstance(completed, StepCompleted)
    assert started.payload.kind is StepKind.INSTRUMENTED
    assert (started.step_key, completed.step_key) == ("charge-card", "charge-card")
    assert (started.seq, completed.seq) == (1, 2)
    assert started.attempt == completed.attempt == 1
    assert completed.payload.duration_ms is not None and completed.payload.duration_ms > 0
    assert completed.payload.output is None  # record_output is off by default
    assert all(key == b"req_123" for key, _ in sink.messages)


def test_the_return_value_is_the_same_object() -> None:
    client, _ = make_client(record_output=True)
    value = {"not": "copied"}
    assert client.run("f", run_id="r").step("s", lambda: value) is value


def test_the_original_exception_is_re_raised_unchanged_and_recorded() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    raised: list[BaseException] = []

    def failing() -> None:
        error = ChargeDeclined("card declined")
        raised.append(error)
        raise error

    with pytest.raises(ChargeDeclined) as caught:
        run.step("charge-card", failing)
    assert caught.value is raised[0]
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    # The traceback still ends where the application raised it.
    innermost = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert innermost.name == "failing" and innermost.line == "raise error"

    started, failed = events_of(sink)
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.type == "ChargeDeclined"
    assert failed.payload.error.message == "card declined"
    assert failed.payload.error.stack is None  # capture_stack is off
    assert failed.payload.duration_ms is not None and failed.payload.duration_ms > 0
    assert failed.payload.retry_at is None


def test_capture_stack_records_the_traceback_from_the_applications_code() -> None:
    client, sink = make_client(capture_stack=True)
    with pytest.raises(ChargeDeclined):
        client.run("checkout", run_id="r").step("charge-card", decline, [1, 2])
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed)
    stack = failed.payload.error.stack
    assert stack is not None
    assert stack.startswith("Traceback (most recent call last):")
    assert "in decline" in stack and "ChargeDeclined: card declined for 3" in stack
    assert "producers/run.py" not in stack  # the SDK's wrapper frame is left out


def test_the_error_type_is_the_qualified_class_name() -> None:
    class Outer:
        class Inner(Exception):
            pass

    def fail() -> None:
        raise Outer.Inner("x")

    client, sink = make_client()
    with pytest.raises(Outer.Inner):
        client.run("f", run_id="r").step("s", fail)
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.type.endswith("Outer.Inner")


@pytest.mark.parametrize("exception_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_are_recorded_as_failed_and_re_raised(
    exception_type: type[BaseException],
) -> None:
    client, sink = make_client()
    error = exception_type()

    def interrupted() -> None:
        raise error

    with pytest.raises(exception_type) as caught:
        client.run("f", run_id="r").step("s", interrupted)
    assert caught.value is error
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed) and failed.payload.error.type == exception_type.__name__


def test_retrying_a_step_in_the_same_run_counts_attempts() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    outcomes = iter([ChargeDeclined("1"), ChargeDeclined("2"), None])

    def flaky() -> str:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "ok"

    for _ in range(3):
        try:
            assert run.step("charge-card", flaky) == "ok"
            break
        except ChargeDeclined:
            continue
    run.step("send-receipt", lambda: None)
    summary = [(e.type, getattr(e, "step_key"), e.attempt, e.seq) for e in events_of(sink)]
    assert summary == [
        ("step.started", "charge-card", 1, 1),
        ("step.failed", "charge-card", 1, 2),
        ("step.started", "charge-card", 2, 3),
        ("step.failed", "charge-card", 2, 4),
        ("step.started", "charge-card", 3, 5),
        ("step.completed", "charge-card", 3, 6),
        ("step.started", "send-receipt", 1, 7),
        ("step.completed", "send-receipt", 1, 8),
    ]


def test_keyword_arguments_reach_the_function() -> None:
    client, _ = make_client()

    def greet(name: str, *, punctuation: str) -> str:
        return f"hi {name}{punctuation}"

    run = client.run("f", run_id="r")
    assert run.step("greet", greet, "ada", punctuation="!", metadata={"n": 1}) == "hi ada!"


# --- async ----------------------------------------------------------------------------------


async def charge_async(cart: list[int]) -> int:
    await asyncio.sleep(0)
    return sum(cart)


async def decline_async(cart: list[int]) -> int:
    await asyncio.sleep(0)
    raise ChargeDeclined("async decline")


def test_an_async_function_gives_an_awaitable_that_returns_its_value() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")

    async def main() -> int:
        pending = run.step("charge-card", charge_async, [1, 2])
        assert asyncio.iscoroutine(pending)
        assert sink.messages == []  # the step starts when awaited, like the function
        return await pending

    assert asyncio.run(main()) == 3
    assert [e.type for e in events_of(sink)] == ["step.started", "step.completed"]


def test_an_async_failure_is_re_raised_unchanged() -> None:
    client, sink = make_client(capture_stack=True)
    run = client.run("checkout", run_id="req_123")

    async def main() -> None:
        await run.step("charge-card", decline_async, [1])

    with pytest.raises(ChargeDeclined, match="async decline") as caught:
        asyncio.run(main())
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed)
    assert failed.payload.error.message == str(caught.value)
    assert failed.payload.error.stack is not None and "decline_async" in failed.payload.error.stack


def test_a_lambda_returning_a_coroutine_is_an_async_step() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")

    async def main() -> int:
        return await run.step("charge-card", lambda: charge_async([4, 5]))

    assert asyncio.run(main()) == 9
    assert [e.type for e in events_of(sink)] == ["step.started", "step.completed"]


def test_a_bound_async_method_and_a_sync_method_are_told_apart() -> None:
    class Service:
        async def charge(self) -> str:
            return "async"

        def refund(self) -> str:
            return "sync"

    client, _ = make_client()
    run = client.run("f", run_id="r")
    service = Service()
    assert run.step("refund", service.refund) == "sync"
    assert asyncio.run(run.step("charge", service.charge)) == "async"


def test_a_cancelled_step_is_recorded_as_failed_with_cancelled_error() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")

    async def main() -> None:
        task = asyncio.create_task(run.step("wait", asyncio.sleep, 60))
        await asyncio.sleep(0.01)  # let the step start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed) and failed.payload.error.type == "CancelledError"


def test_concurrent_async_steps_each_get_their_events() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")

    async def main() -> list[int]:
        return list(
            await asyncio.gather(
                run.step("a", charge_async, [1]),
                run.step("b", charge_async, [2]),
                run.step("c", charge_async, [3]),
            )
        )

    assert asyncio.run(main()) == [1, 2, 3]
    events = events_of(sink)
    assert sorted(e.seq for e in events) == list(range(1, 7))
    for key in "abc":
        assert [e.type for e in events if getattr(e, "step_key") == key] == [
            "step.started",
            "step.completed",
        ]


# --- the block form -------------------------------------------------------------------------


def test_with_block_records_a_step_and_lets_exceptions_through() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    with run.step("reserve-stock", metadata={"items": 2}) as scope:
        assert scope.attempt == 1
    error = ChargeDeclined("in block")
    with pytest.raises(ChargeDeclined) as caught:
        with run.step("reserve-stock"):
            raise error
    assert caught.value is error
    types = [(e.type, e.attempt) for e in events_of(sink)]
    assert types == [
        ("step.started", 1),
        ("step.completed", 1),
        ("step.started", 2),
        ("step.failed", 2),
    ]
    first = events_of(sink)[0]
    assert isinstance(first, StepStarted) and first.payload.metadata == {"items": 2}


def test_async_with_block_records_a_step() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")

    async def main() -> None:
        async with run.step("reserve-stock"):
            await asyncio.sleep(0)
        with pytest.raises(ChargeDeclined):
            async with run.step("charge-card"):
                raise ChargeDeclined("x")

    asyncio.run(main())
    assert [e.type for e in events_of(sink)] == [
        "step.started",
        "step.completed",
        "step.started",
        "step.failed",
    ]


# --- mistakes surface at the call site, before the step runs --------------------------------


def test_oversized_metadata_is_refused_before_the_function_runs() -> None:
    client, sink = make_client()
    calls: list[int] = []
    with pytest.raises(MetadataError) as caught:
        client.run("f", run_id="r").step("s", calls.append, 1, metadata={"note": "x" * 2000})
    assert caught.value.key == "note" and "2000 characters" in str(caught.value)
    assert calls == [] and sink.messages == []


def test_oversized_metadata_of_an_async_step_is_refused_at_the_call() -> None:
    client, _ = make_client()
    with pytest.raises(MetadataError):
        client.run("f", run_id="r").step(  # type: ignore[unused-coroutine]
            "s", charge_async, [1], metadata={"k" * 200: 1}
        )


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_a_bad_step_key_is_refused_before_the_function_runs(key: str) -> None:
    client, sink = make_client()
    calls: list[int] = []
    with pytest.raises(InvalidEventError) as caught:
        client.run("f", run_id="r").step(key, calls.append, 1)
    assert caught.value.field == "step_key"
    assert calls == [] and sink.messages == []


def test_a_bad_flow_or_run_id_is_refused_when_the_run_is_made() -> None:
    client, _ = make_client()
    with pytest.raises(InvalidEventError) as caught:
        client.run("", run_id="r")
    assert caught.value.field == "flow"
    with pytest.raises(InvalidEventError) as caught:
        client.run("f", run_id="r" * 201)
    assert caught.value.field == "run_id"


def test_metadata_secrets_are_redacted_on_the_wire() -> None:
    client, sink = make_client()
    client.run("f", run_id="r").step(
        "s", lambda: None, metadata={"Authorization": "Bearer abc", "note": "4111 1111 1111 1111"}
    )
    raw = sink.messages[0][1]
    assert b"Bearer" not in raw and b"4111" not in raw
    started = events_of(sink)[0]
    assert isinstance(started, StepStarted)
    assert started.payload.metadata == {"Authorization": REDACTED, "note": REDACTED}


# --- outputs --------------------------------------------------------------------------------


def test_outputs_are_recorded_only_when_asked() -> None:
    client, sink = make_client()
    run = client.run("f", run_id="r")
    run.step("default", lambda: {"secret": "customer data"})
    run.step("asked", lambda: {"total": 42}, record_output=True)
    completed = [e for e in events_of(sink) if isinstance(e, StepCompleted)]
    assert [e.payload.output for e in completed] == [None, {"total": 42}]


def test_an_output_that_is_not_json_or_too_long_is_recorded_as_null() -> None:
    client, sink = make_client(record_output=True, max_output_chars=100)
    run = client.run("f", run_id="r")
    marker = object()
    assert run.step("object", lambda: marker) is marker
    assert run.step("long", lambda: "x" * 200) == "x" * 200
    assert run.step("nan", lambda: float("nan")) != 0
    run.step("off", lambda: 1, record_output=False)
    completed = [e for e in events_of(sink) if isinstance(e, StepCompleted)]
    assert [e.payload.output for e in completed] == [None, None, None, None]


# --- skip and complete ----------------------------------------------------------------------


def test_skip_records_a_skipped_step_with_its_reason_and_metadata() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    run.skip("send-receipt", "customer opted out", metadata={"cookie": "c"})
    (skipped,) = events_of(sink)
    assert isinstance(skipped, StepSkipped)
    assert skipped.step_key == "send-receipt" and skipped.seq == 1 and skipped.attempt == 1
    assert skipped.payload.reason == "customer opted out"
    assert skipped.payload.metadata == {"cookie": REDACTED}


def test_complete_records_run_completed_with_its_output() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    run.step("a", lambda: None)
    run.complete({"status": "shipped"})
    completed = events_of(sink)[-1]
    assert isinstance(completed, RunCompleted)
    assert completed.payload.output == {"status": "shipped"} and completed.seq == 3
    with pytest.raises(InvalidEventError) as caught:
        run.complete(object())
    assert caught.value.field == "output"


# --- threads --------------------------------------------------------------------------------


def test_one_run_used_from_many_threads_numbers_every_event_once() -> None:
    client, sink = make_client()
    run = client.run("checkout", run_id="req_123")
    per_thread = 500

    def work(index: int) -> None:
        for _ in range(per_thread):
            run.step(f"step-{index}", lambda: None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = events_of(sink)
    assert len(events) == 4 * per_thread * 2
    assert sorted(e.seq for e in events) == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)
    for index in range(4):
        attempts = [e.attempt for e in events if isinstance(e, StepStarted)
                    and e.step_key == f"step-{index}"]
        assert sorted(attempts) == list(range(1, per_thread + 1))


# --- record_step ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        ("running", "step.started"),
        ("success", "step.completed"),
        ("succeeded", "step.completed"),
        ("completed", "step.completed"),
        ("SUCCESS", "step.completed"),
        ("error", "step.failed"),
        ("failed", "step.failed"),
        ("skipped", "step.skipped"),
    ],
)
def test_record_step_maps_every_sdk_status_word_to_its_event(status: str, event_type: str) -> None:
    client, sink = make_client()
    client.record_step(flow_key="checkout", run_id="req_123", step_key="manual", status=status)
    (event,) = events_of(sink)
    assert event.type == event_type
    assert (event.flow, event.run_id, getattr(event, "step_key")) == (
        "checkout",
        "req_123",
        "manual",
    )
    assert event.seq == 0 and event.attempt == 1 and event.project == "shop"
    assert sink.messages[0][0] == b"req_123"


@pytest.mark.parametrize("status", ["pending", "scheduled", "retrying", "interrupted"])
def test_record_step_refuses_statuses_an_instrumented_step_cannot_report(status: str) -> None:
    client, sink = make_client()
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(flow_key="f", run_id="r", step_key="s", status=status)
    assert caught.value.field == "status"
    assert "running, success/succeeded/completed, error/failed, skipped" in caught.value.problem
    assert sink.messages == []


@pytest.mark.parametrize("status", ["done", "missing", "stuck"])
def test_record_step_refuses_unknown_and_derived_statuses(status: str) -> None:
    client, _ = make_client()
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(flow_key="f", run_id="r", step_key="s", status=status)
    assert caught.value.field == "status"


def test_record_step_carries_error_output_duration_and_redacted_metadata() -> None:
    client, sink = make_client()
    client.record_step(
        flow_key="checkout",
        run_id="r",
        step_key="ship",
        status="error",
        error="carrier API returned 503",
        duration_ms=812.5,
        metadata={"carrier": "dhl", "api_key": "k"},
    )
    client.record_step(
        flow_key="checkout", run_id="r", step_key="ship", status="success", output={"n": 1},
        attempt=2,
    )
    client.record_step(
        flow_key="checkout", run_id="r", step_key="x", status="failed", error=TimeoutError("t")
    )
    failed, completed, failed_exc = events_of(sink)
    assert isinstance(failed, StepFailed)
    assert failed.payload.error == ErrorInfo(type="Error", message="carrier API returned 503")
    assert failed.payload.duration_ms == 812.5
    assert failed.payload.metadata == {"carrier": "dhl", "api_key": REDACTED}
    assert isinstance(completed, StepCompleted)
    assert completed.payload.output == {"n": 1} and completed.attempt == 2
    assert isinstance(failed_exc, StepFailed)
    assert failed_exc.payload.error == ErrorInfo(type="TimeoutError", message="t")


@pytest.mark.parametrize(
    ("status", "arguments", "field"),
    [
        ("success", {"error": "boom"}, "error"),
        ("running", {"output": 1}, "output"),
        ("skipped", {"duration_ms": 1.0}, "duration_ms"),
        ("failed", {"reason": "why"}, "reason"),
    ],
)
def test_record_step_refuses_arguments_its_event_has_no_place_for(
    status: str, arguments: dict[str, Any], field: str
) -> None:
    client, _ = make_client()
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(flow_key="f", run_id="r", step_key="s", status=status, **arguments)
    assert caught.value.field == field


def test_record_step_names_a_bad_argument() -> None:
    client, _ = make_client()
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(flow_key="", run_id="r", step_key="s", status="success")
    assert caught.value.field == "flow"
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(
            flow_key="f", run_id="r", step_key="s", status="success", duration_ms=-1.0
        )
    assert caught.value.field == "payload.duration_ms"


# --- sending never breaks the caller --------------------------------------------------------


class FailingSink(MemorySink):
    """Raises `error` for the sends whose (1-based) numbers are in `fail_on`."""

    def __init__(self, error: Exception, fail_on: set[int], max_event_bytes: int = 1 << 20):
        super().__init__(max_event_bytes=max_event_bytes)
        self.error = error
        self.fail_on = fail_on
        self.calls = 0

    def send(self, key: bytes, value: bytes) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.error
        super().send(key, value)


def collecting() -> tuple[list[BaseException], Callable[[BaseException], None]]:
    seen: list[BaseException] = []
    return seen, seen.append


def test_a_send_failure_goes_to_on_error_and_the_step_goes_on() -> None:
    seen, on_error = collecting()
    error = EventTooLargeError("", "too big")
    client, sink = make_client(sink=FailingSink(error, {1, 2}), on_error=on_error)
    assert client.run("f", run_id="r").step("s", charge_card, [1, 2]) == 3
    assert seen == [error, error]
    assert sink.messages == []


def test_an_oversized_failure_event_never_replaces_the_applications_exception() -> None:
    seen, on_error = collecting()
    # Room for step.started, not for step.failed with a 2 kB message.
    client, _ = make_client(sink=MemorySink(max_event_bytes=1024), on_error=on_error)
    error = ChargeDeclined("x" * 2000)

    def fail() -> None:
        raise error

    with pytest.raises(ChargeDeclined) as caught:
        client.run("f", run_id="r").step("s", fail)
    assert caught.value is error
    assert len(seen) == 1 and isinstance(seen[0], EventTooLargeError)


def test_with_throw_on_send_error_a_failure_at_the_end_of_a_step_surfaces_at_the_next_call() -> (
    None
):
    seen, on_error = collecting()
    error = EventTooLargeError("", "too big")
    client, sink = make_client(
        sink=FailingSink(error, {2}), on_error=on_error, throw_on_send_error=True
    )
    run = client.run("f", run_id="r")
    assert run.step("first", charge_card, [1]) == 1  # the value is never lost
    assert seen == [error]
    calls: list[int] = []
    with pytest.raises(SendError) as caught:
        run.step("second", calls.append, 1)
    assert caught.value.__cause__ is error
    assert calls == []  # raised before the application's code ran
    run.step("third", calls.append, 1)  # reported once, then clear
    assert calls == [1]


def test_with_throw_on_send_error_a_failure_at_the_start_raises_before_the_step() -> None:
    error = SendError("2 send failure(s) to topic 't'")
    client, sink = make_client(sink=FailingSink(error, {1}), throw_on_send_error=True)
    calls: list[int] = []
    with pytest.raises(SendError) as caught:
        client.run("f", run_id="r").step("s", calls.append, 1)
    assert caught.value is error and calls == []


def test_earlier_failures_raised_while_recording_an_end_do_not_lose_that_event() -> None:
    # The sender raises SendError for earlier failures without queuing the event it was given:
    # the client queues it again and keeps the error for the next call.
    error = SendError("1 send failure(s) to topic 't'")
    client, sink = make_client(sink=FailingSink(error, {2}), throw_on_send_error=True)
    run = client.run("f", run_id="r")
    assert run.step("s", charge_card, [5]) == 5
    assert [e.type for e in events_of(sink)] == ["step.started", "step.completed"]
    with pytest.raises(SendError):
        client.flush()
    assert client.flush() is True


def test_a_failing_callback_does_not_break_the_caller() -> None:
    def broken(exc: BaseException) -> None:
        raise RuntimeError("callback bug")

    client, _ = make_client(sink=FailingSink(EventTooLargeError("", "x"), {1, 2}), on_error=broken)
    assert client.run("f", run_id="r").step("s", charge_card, [2]) == 2


def test_an_exception_whose_str_fails_is_still_recorded() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    def fail() -> None:
        raise Unprintable()

    client, sink = make_client()
    with pytest.raises(Unprintable):
        client.run("f", run_id="r").step("s", fail)
    failed = events_of(sink)[1]
    assert isinstance(failed, StepFailed) and "Unprintable" in failed.payload.error.message


# --- the client -----------------------------------------------------------------------------


def test_steplog_exports_the_client() -> None:
    assert steplog.Client is Client


def test_the_project_comes_from_the_settings_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPLOG_PROJECT", "from-env")
    client = Client(sink=MemorySink())
    assert client.project == "from-env"
    client.run("f", run_id="r").step("s", lambda: None)
    assert client.sink.stats().sent == 2


def test_a_client_with_every_argument_reads_no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLOG_NOT_A_SETTING", "1")  # would fail load_settings()
    client = Client(project="p", bootstrap="127.0.0.1:1", topic="t")
    assert client.project == "p"
    client.close()


def test_flush_stats_and_close_go_to_the_sink() -> None:
    client, sink = make_client()
    client.run("f", run_id="r").step("s", lambda: None)
    assert client.flush() is True
    assert asyncio.run(client.flush_async()) is True
    assert client.stats().sent == 2
    with client:
        pass
    assert sink.closed


def test_a_run_id_is_made_when_none_is_given() -> None:
    client, _ = make_client()
    first, second = client.run("f"), client.run("f")
    assert first.run_id != second.run_id and len(first.run_id) == 32

