"""The poison corpus: for every limited field, values just inside and just outside its limits
(`schemas/limits.py`), through each door of the real stack (broker, processors, engine).

- the SDK: outside is an error to the caller, raised before the step's code runs;
- the ingest API: outside is 400 naming the field and the limit;
- straight to the events topic as bytes: outside is a dead letter naming the field, inside
  lands in ClickHouse (the edges of each column's type included: attempt 2^32 - 1, seq 2^64 - 1,
  timestamps at both ends of DateTime64);

and after each, a canary run still lands: the processors did not halt. One processors child
serves the whole file.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from steplog import Client
from steplog.server.api import api_app
from steplog.errors import InvalidEventError, MetadataError
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_dead_letter
from steplog.schemas.limits import (
    ATTEMPT_MAX,
    ERROR_MESSAGE_MAX_CHARS,
    ERROR_TYPE_MAX_CHARS,
    METADATA_MAX_STRING_CHARS,
    NAME_MAX_CHARS,
    REASON_MAX_CHARS,
    SEQ_MAX,
)
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import (
    RunningProcessors,
    isolated_settings,
    start_processors,
    wait_for,
    with_own_engine,
)
from tests.integration.web_keys import admin_ring, bearer

FLOW = "poison"
LARGEST_FLOAT = "1.7976931348623157e308"
# Written into the JSON text in place of the quoted marker: Python's json cannot write them.
OVERFLOW = "__1e400__"
NAN = "__NaN__"


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProcessors]:
    directory = tmp_path_factory.mktemp("poison")
    settings = isolated_settings(kafka_bootstrap, clickhouse_dsn, directory / "steplog")
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    running = start_processors(with_own_engine(settings, directory), directory / "processors.log")
    try:
        yield running
    finally:
        running.stop()


# --- the corpus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One event of the corpus; `field` and `limit` are what a refusal must name (None: the
    event is inside every limit and must land)."""

    name: str
    document: dict[str, Any]
    field: str | None = None
    limit: str = ""

    @property
    def inside(self) -> bool:
        return self.field is None

    @property
    def run_id(self) -> str:
        return str(self.document["run_id"])

    @property
    def event_id(self) -> str:
        return str(self.document["event_id"])

    def json(self) -> bytes:
        text = json.dumps(self.document, ensure_ascii=False)
        return text.replace(f'"{OVERFLOW}"', "1e400").replace(f'"{NAN}"', "NaN").encode()


def event(
    of_project: str, tag: str, *, kind: str = "step.completed", payload: Any = None,
    **envelope: Any,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "type": kind,
        "schema_version": 1,
        "project": of_project,
        "flow": FLOW,
        "run_id": f"{tag}-{uuid.uuid4().hex[:8]}",
        "attempt": 1,
        "ts": "2024-05-01T12:00:00.000001Z",
        "seq": 1,
        "step_key": "step",
        "payload": payload if payload is not None else {"output": None, "duration_ms": 1.5},
    }
    document.update(envelope)
    return document


def failed(message: str = "boom", type_: str = "Error") -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "stack": None}, "duration_ms": 2.0}


def corpus(of_project: str, *, json_only: bool) -> list[Case]:
    """Every limited field at its limits. `json_only`: leave out the NaN literal, which an HTTP
    body cannot carry as JSON (the API refuses the whole body before any field)."""

    def case(name: str, field: str | None = None, limit: str = "", **spec: Any) -> Case:
        return Case(name, event(of_project, name, **spec), field, limit)

    cases = [
        # inside: the edges of each column's type
        case("attempt-and-seq-max", attempt=ATTEMPT_MAX, seq=SEQ_MAX),
        case("ts-max", ts="2299-12-31T23:59:59.999999Z"),
        case("ts-min", ts="1900-01-01T00:00:00Z"),
        case("ts-max-with-offset", ts="2300-01-01T04:59:59+05:00"),
        case("run-id-longest", run_id="r" * NAME_MAX_CHARS),
        case("unicode-names", step_key="étape ✓ 日本", flow="flüss"),
        case("largest-floats", payload={
            "output": {"x": float(LARGEST_FLOAT), "big": 2**70}, "duration_ms": 1.7e308,
        }),
        case("metadata-longest", kind="step.started", payload={
            "kind": "instrumented", "metadata": {"m": "x" * METADATA_MAX_STRING_CHARS},
        }),
        case("error-longest", kind="step.failed",
             payload=failed("m" * ERROR_MESSAGE_MAX_CHARS, "T" * ERROR_TYPE_MAX_CHARS)),
        case("reason-longest", kind="step.skipped", payload={"reason": "r" * REASON_MAX_CHARS}),
        # outside
        case("attempt-2^32", "attempt", str(ATTEMPT_MAX), attempt=ATTEMPT_MAX + 1),
        case("attempt-2^70", "attempt", str(ATTEMPT_MAX), attempt=2**70),
        case("attempt-0", "attempt", "1", attempt=0),
        case("seq-2^64", "seq", str(SEQ_MAX), seq=SEQ_MAX + 1),
        case("seq-negative", "seq", "0", seq=-1),
        case("ts-after-2299", "ts", "2299-12-31", ts="2300-01-01T00:00:00Z"),
        case("ts-before-1900", "ts", "1900-01-01", ts="1899-12-31T23:59:59.999999Z"),
        case("run-id-nul", "run_id", "U+0000", run_id="run\x00nul"),
        case("run-id-c1", "run_id", "U+0085", run_id="run\x85c1"),
        case("run-id-too-long", "run_id", str(NAME_MAX_CHARS), run_id="r" * (NAME_MAX_CHARS + 1)),
        case("step-key-unit-separator", "step_key", "U+001F", step_key="a\x1fb"),
        case("step-key-del", "step_key", "U+007F", step_key="a\x7f"),
        case("project-newline", "project", "U+000A", project="shop\n"),
        case("flow-nul", "flow", "U+0000", flow="\x00"),
        case("event-id-escape", "event_id", "U+001B", event_id="e\x1b[31m"),
        case("duration-1e400", "payload.duration_ms", "finite",
             payload={"output": None, "duration_ms": OVERFLOW}),
        case("duration-negative", "payload.duration_ms", "0",
             payload={"output": None, "duration_ms": -1.0}),
        case("output-1e400", "payload.output.x.1", "finite",
             payload={"output": {"x": [1, OVERFLOW]}, "duration_ms": 1.0}),
        case("metadata-1e400", "payload.metadata.m", "finite", kind="step.started",
             payload={"kind": "instrumented", "metadata": {"m": OVERFLOW}}),
        case("metadata-too-long", "payload.metadata.m", str(METADATA_MAX_STRING_CHARS),
             kind="step.started", payload={
                 "kind": "instrumented", "metadata": {"m": "x" * (METADATA_MAX_STRING_CHARS + 1)},
             }),
        case("error-message-too-long", "payload.error.message", str(ERROR_MESSAGE_MAX_CHARS),
             kind="step.failed", payload=failed("m" * (ERROR_MESSAGE_MAX_CHARS + 1))),
        case("error-type-too-long", "payload.error.type", str(ERROR_TYPE_MAX_CHARS),
             kind="step.failed", payload=failed(type_="T" * (ERROR_TYPE_MAX_CHARS + 1))),
        case("reason-too-long", "payload.reason", str(REASON_MAX_CHARS), kind="step.skipped",
             payload={"reason": "r" * (REASON_MAX_CHARS + 1)}),
    ]
    if not json_only:
        cases.append(case("output-nan", "payload.output", "finite",
                          payload={"output": NAN, "duration_ms": 1.0}))
    return cases


# --- reading the stack back -----------------------------------------------------------------


def landed(stack: RunningProcessors, event_ids: list[str]) -> set[str]:
    listed = ", ".join(f"'{event_id}'" for event_id in event_ids)
    result = stack.sql.query(f"SELECT event_id FROM events FINAL WHERE event_id IN ({listed})")
    return {row[0] for row in result.result_rows}


def wait_until_landed(stack: RunningProcessors, event_ids: list[str], what: str) -> None:
    missing: list[str] = list(event_ids)

    def all_there() -> bool:
        missing[:] = sorted(set(event_ids) - landed(stack, event_ids))
        return not missing

    try:
        wait_for(all_there, timeout=60, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing event ids: {missing}") from None


def canary(project: str, tag: str) -> dict[str, Any]:
    return event(project, f"canary-{tag}")


# --- (c) straight to the topic --------------------------------------------------------------


def test_raw_events_inside_land_and_outside_are_dead_lettered_naming_the_field(
    stack: RunningProcessors,
) -> None:
    settings = stack.settings
    cases = corpus(settings.project, json_only=False)
    canaries = [canary(settings.project, case.name) for case in cases]

    async def produce() -> dict[int, Case]:
        # Everything on partition 0, each case followed by its canary: the canary is read only
        # after the processors got past the case.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        offsets: dict[int, Case] = {}
        try:
            for case, bird in zip(cases, canaries, strict=True):
                sent = await producer.send_and_wait(
                    settings.topics.events, case.json(), key=case.run_id.encode(), partition=0
                )
                offsets[sent.offset] = case
                await producer.send_and_wait(
                    settings.topics.events, json.dumps(bird).encode(),
                    key=bird["run_id"].encode(), partition=0,
                )
        finally:
            await producer.stop()
        return offsets

    by_offset = asyncio.run(produce())
    wait_until_landed(stack, [bird["event_id"] for bird in canaries], "every canary to land")
    inside = [case for case in cases if case.inside]
    wait_until_landed(stack, [case.event_id for case in inside], "the cases inside the limits")
    assert not landed(stack, [case.event_id for case in cases if not case.inside])
    edges = stack.sql.query(
        f"SELECT attempt, seq FROM events FINAL WHERE event_id = '{inside[0].event_id}'"
    ).result_rows
    assert edges == [(ATTEMPT_MAX, SEQ_MAX)]

    async def dead_letters() -> list[Any]:
        return [decode_dead_letter(record.value)
                async for record in read_log(settings.kafka_bootstrap, settings.topics.dlq)]

    letters = {letter.offset: letter for letter in asyncio.run(dead_letters())
               if letter.source_topic == settings.topics.events and letter.partition == 0}
    for offset, case in by_offset.items():
        if case.inside:
            assert offset not in letters, f"{case.name} was dead-lettered: {letters[offset]}"
            continue
        assert offset in letters, f"{case.name} was not dead-lettered"
        letter = letters[offset]
        assert (letter.field, case.limit in letter.reason) == (case.field, True), (
            f"{case.name}: {letter.field}: {letter.reason}"
        )


# --- (b) through the ingest API -------------------------------------------------------------


def test_the_api_refuses_each_case_outside_with_400_naming_field_and_limit(
    stack: RunningProcessors,
) -> None:
    settings = stack.settings
    cases = corpus(settings.project, json_only=True)
    inside = [case for case in cases if case.inside]
    refusals: dict[str, dict[str, Any]] = {}

    async def scenario() -> None:
        events = EventSender(
            settings.kafka_bootstrap, settings.topics.events,
            max_event_bytes=settings.max_event_bytes,
        )
        signals = EventSender(
            settings.kafka_bootstrap, settings.topics.signals,
            max_event_bytes=settings.max_event_bytes,
        )
        headers = {"Content-Type": "application/json"}
        keys, secret = admin_ring()
        app = api_app(settings, events, signals, keys=keys)
        async with TestClient(TestServer(app), headers=bearer(secret)) as client:
            for case in cases:
                if case.inside:
                    continue
                answer = await client.post("/v1/events", data=case.json(), headers=headers)
                refusals[case.name] = {"status": answer.status, **await answer.json()}
            body = b"[" + b",".join(case.json() for case in inside) + b"]"
            answer = await client.post("/v1/events?wait=true", data=body, headers=headers)
            assert answer.status == 202, await answer.text()
            answer = await client.post(
                "/v1/events?wait=true", json=canary(settings.project, "api")
            )
            assert answer.status == 202, await answer.text()

    asyncio.run(scenario())
    for case in cases:
        if case.inside:
            continue
        refusal = refusals[case.name]
        assert refusal["status"] == 400 and refusal["accepted"] == 0, (case.name, refusal)
        first = refusal["errors"][0]
        assert (first["field"], case.limit in first["problem"]) == (case.field, True), (
            f"{case.name}: {first}"
        )
    wait_until_landed(stack, [case.event_id for case in inside], "the API's inside cases")


# --- (a) through the SDK --------------------------------------------------------------------


def refused(call: Callable[[], object]) -> InvalidEventError | MetadataError:
    with pytest.raises((InvalidEventError, MetadataError)) as caught:
        call()
    assert isinstance(caught.value, (InvalidEventError, MetadataError))
    return caught.value


def test_the_sdk_raises_to_the_caller_outside_and_delivers_inside(
    stack: RunningProcessors,
) -> None:
    settings = stack.settings
    client = Client(settings=settings)
    tag = uuid.uuid4().hex[:8]
    calls: list[str] = []

    def step_body() -> str:
        calls.append("ran")
        return "done"

    run = client.run(FLOW, run_id=f"sdk-{tag}")
    record: dict[str, Any] = {
        "flow_key": FLOW, "run_id": f"sdk-record-{tag}", "step_key": "remote",
    }
    problems = {
        "project": refused(lambda: Client("shop\x00", settings=settings)),
        "run_id": refused(lambda: client.run(FLOW, run_id="run\x00nul")),
        "flow": refused(lambda: client.run("flow\x85", run_id="x")),
        "step_key": refused(lambda: run.step("a\x1fb", step_body)),
        "metadata-inf": refused(lambda: run.step("s", step_body, metadata={"m": math.inf})),
        "metadata-long": refused(lambda: run.step(
            "s", step_body, metadata={"m": "x" * (METADATA_MAX_STRING_CHARS + 1)}
        )),
        "reason": refused(lambda: run.skip("s", reason="r" * (REASON_MAX_CHARS + 1))),
        "output": refused(lambda: run.complete(output={"x": math.nan})),
        "attempt": refused(lambda: client.record_step(
            **record, status="success", attempt=ATTEMPT_MAX + 1
        )),
        "duration": refused(lambda: client.record_step(
            **record, status="success", duration_ms=math.inf
        )),
        "record-output": refused(lambda: client.record_step(
            **record, status="success", output={"x": [math.inf]}
        )),
        "record-step-key": refused(lambda: client.record_step(
            **{**record, "step_key": "k\x7f"}, status="running"
        )),
    }
    assert calls == [], "a refused step must not run the caller's code"
    named = {
        name: problem.field if isinstance(problem, InvalidEventError) else problem.key
        for name, problem in problems.items()
    }
    assert named == {
        "project": "project", "run_id": "run_id", "flow": "flow", "step_key": "step_key",
        "metadata-inf": "m", "metadata-long": "m", "reason": "reason", "output": "output",
        "attempt": "attempt", "duration": "payload.duration_ms",
        "record-output": "payload.output.x.0", "record-step-key": "step_key",
    }
    assert str(ATTEMPT_MAX) in str(problems["attempt"])
    assert "U+0000" in str(problems["run_id"]) and "finite" in str(problems["metadata-inf"])

    # Inside every limit: delivered, then a canary after them.
    longest = client.run(FLOW, run_id=f"sdk-{tag}-".ljust(NAME_MAX_CHARS, "r"))
    assert longest.step(
        "étape ✓", step_body, metadata={"m": "x" * METADATA_MAX_STRING_CHARS}
    ) == "done"
    longest.skip("skipped", reason="r" * REASON_MAX_CHARS)
    client.record_step(**record, status="success", attempt=ATTEMPT_MAX, duration_ms=1.7e308)
    client.record_step(**record, status="error", error="m" * (ERROR_MESSAGE_MAX_CHARS * 2))
    client.run(FLOW, run_id=f"canary-sdk-{tag}").step("canary", step_body)
    assert client.flush(timeout=60)
    assert client.stats().failed == 0 and client.stats().dropped == 0
    client.close()

    def counts() -> dict[str, int]:
        result = stack.sql.query(
            "SELECT run_id, count() FROM events FINAL WHERE run_id IN "
            f"('{longest.run_id}', 'sdk-record-{tag}', 'canary-sdk-{tag}') GROUP BY run_id"
        )
        return {row[0]: row[1] for row in result.result_rows}

    expected = {longest.run_id: 3, f"sdk-record-{tag}": 2, f"canary-sdk-{tag}": 2}
    wait_for(lambda: counts() == expected, timeout=60, what=f"the SDK's events: {expected}")
