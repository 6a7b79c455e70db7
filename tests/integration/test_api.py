"""The ingest API against the real broker: what a service in another language POSTs arrives on
the topics exactly as the SDK would have sent it, and anything invalid is refused whole, with
its index and field, before a byte reaches Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import steplog.schemas
from steplog.server.api import MAX_BODY_BYTES, STALL_AFTER_S, api_app
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import LogRecord, read_log, topic_end_offsets
from steplog.schemas.codec import decode_event, decode_flow, decode_signal
from steplog.schemas.events import EVENT_TYPES
from steplog.server.key_ring import mint_key, publish_key
from steplog.server.principals import Role
from steplog.settings import Settings, child_environment
from tests.conftest import free_port, wait_for
from tests.integration.web_keys import admin_ring, bearer

EXAMPLES = Path(steplog.schemas.__file__).parent / "examples"
Client = TestClient[web.Request, web.Application]


def golden(kind: str) -> dict[str, Any]:
    document = json.loads((EXAMPLES / f"{kind}.json").read_text())
    assert isinstance(document, dict)
    return document


def golden_events() -> list[dict[str, Any]]:
    return [golden(kind) for kind in sorted(EVENT_TYPES)]


@asynccontextmanager
async def running_api(
    settings: Settings, *, events: EventSender | None = None, stall_after: float = STALL_AFTER_S
) -> AsyncIterator[Client]:
    """The app on a loopback port of its own, every request with an admin key; leaving the
    block stops it and closes (flushes) its senders."""
    events = events or EventSender(
        settings.kafka_bootstrap, settings.topics.events, max_event_bytes=settings.max_event_bytes
    )
    signals = EventSender(
        settings.kafka_bootstrap, settings.topics.signals, max_event_bytes=settings.max_event_bytes
    )
    keys, secret = admin_ring()
    app = api_app(settings, events, signals, keys=keys, stall_after=stall_after)
    async with TestClient(TestServer(app), headers=bearer(secret)) as client:
        yield client


async def read_topic(settings: Settings, topic: str) -> list[LogRecord]:
    return [record async for record in read_log(settings.kafka_bootstrap, topic)]


def test_golden_events_posted_as_a_json_array_arrive_keyed_by_run_id(topics: Settings) -> None:
    sent = golden_events()

    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/events?wait=true", json=sent)
            assert response.status == 202, await response.text()
            assert await response.json() == {"accepted": len(sent), "acknowledged": True}

    asyncio.run(scenario())
    records = asyncio.run(read_topic(topics, topics.topics.events))
    received = {event.event_id: (record, event) for record in records
                for event in [decode_event(record.value)]}
    assert len(records) == len(sent) == len(EVENT_TYPES)
    for document in sent:
        record, event = received[document["event_id"]]
        assert record.key == document["run_id"].encode()
        # What landed is what an SDK's encoder would have written for the same example.
        assert event == decode_event(json.dumps(document).encode())


def test_ndjson_bodies_are_one_event_per_line(topics: Settings) -> None:
    lines = []
    for index in range(3):
        event = golden("step.completed")
        event.update(event_id=f"ndjson-{index}", run_id=f"run-{index}")
        lines.append(json.dumps(event))
    body = "\n".join(lines[:2]) + "\n\n" + lines[2] + "\n"  # a blank line is skipped

    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post(
                "/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
            )
            assert response.status == 202, await response.text()
            assert await response.json() == {"accepted": 3}
        # Leaving the block closed the sender, which flushed: the events are on the topic.

    asyncio.run(scenario())
    records = asyncio.run(read_topic(topics, topics.topics.events))
    keys = {decode_event(record.value).event_id: record.key for record in records}
    assert keys == {f"ndjson-{i}": f"run-{i}".encode() for i in range(3)}


def test_one_invalid_event_refuses_the_whole_request_naming_index_and_field(
    topics: Settings,
) -> None:
    valid = golden("step.started")
    # (An unknown field is not a refusal: it is a newer minor's, schemas/COMPATIBILITY.md.)
    no_run = {k: v for k, v in golden("step.completed").items() if k != "run_id"}
    wrong_type = {**golden("step.skipped"), "seq": "five"}
    unknown_type = {**golden("run.started"), "type": "run.exploded"}
    ends_before = asyncio.run(topic_end_offsets(topics.kafka_bootstrap, topics.topics.events))

    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post(
                "/v1/events?wait=true", json=[valid, no_run, wrong_type, unknown_type]
            )
            assert response.status == 400
            answer = await response.json()
            assert answer["accepted"] == 0
            assert "3 invalid event(s), the first at index 1; nothing was accepted" == (
                answer["error"]
            )
            errors = {error["index"]: error for error in answer["errors"]}
            assert set(errors) == {1, 2, 3}
            assert errors[1]["field"] == "run_id" and "missing" in errors[1]["problem"]
            assert errors[2]["field"] == "seq" and "'five'" in errors[2]["problem"]
            assert errors[3]["field"] == "type" and "run.exploded" in errors[3]["problem"]

            # The sender is first in, first out: had anything of the refused request been
            # queued, it would be on the topic before this event.
            later = await client.post("/v1/events?wait=true", json=valid)
            assert later.status == 202, await later.text()

    asyncio.run(scenario())
    ends_after = asyncio.run(topic_end_offsets(topics.kafka_bootstrap, topics.topics.events))
    assert sum(ends_after) - sum(ends_before) == 1
    (record,) = asyncio.run(read_topic(topics, topics.topics.events))
    assert decode_event(record.value).event_id == valid["event_id"]


def test_bodies_that_are_not_events_are_400_saying_why(topics: Settings) -> None:
    too_big = {**golden("step.started"), "payload": {"input": "x" * 2048}}
    small_events = topics.model_copy(update={"max_event_bytes": 1024})

    async def scenario() -> None:
        async with running_api(small_events) as client:
            response = await client.post("/v1/events", data=b'[{"type": ')
            assert response.status == 400
            (error,) = (await response.json())["errors"]
            assert error["index"] is None
            assert error["problem"].startswith("request body is not JSON")

            response = await client.post("/v1/events", json=golden("step.started") | {"seq": 1.5})
            assert response.status == 400
            assert (await response.json())["errors"][0]["field"] == "seq"

            response = await client.post("/v1/events", json=[too_big, 7])
            assert response.status == 400
            first, second = (await response.json())["errors"]
            assert first["index"] == 0 and "over the limit of 1024 bytes" in first["problem"]
            assert second == {
                "index": 1, "field": "", "problem": "expected a JSON object (event), got a number"
            }

            response = await client.post(
                "/v1/events", data='{"type": "step.started"}\nnot json\n',
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert response.status == 400
            first, second = (await response.json())["errors"]
            assert first["index"] == 0 and first["line"] == 1 and first["field"] != ""
            assert second["index"] == 1 and second["line"] == 2
            assert second["problem"].startswith("not JSON")

    asyncio.run(scenario())
    assert sum(asyncio.run(topic_end_offsets(topics.kafka_bootstrap, topics.topics.events))) == 0


def test_a_body_over_the_limit_is_413_whether_its_length_is_announced_or_not(
    topics: Settings,
) -> None:
    oversized = b"[" + b" " * MAX_BODY_BYTES + b"]"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 1024 * 1024):
            yield oversized[start : start + 1024 * 1024]

    async def scenario() -> None:
        async with running_api(topics) as client:
            for body in (oversized, chunks()):
                response = await client.post("/v1/events", data=body)
                assert response.status == 413
                message = (await response.json())["error"]
                assert f"over the limit of {MAX_BODY_BYTES} bytes (16 MiB)" in message

    asyncio.run(scenario())


def test_errors_about_the_request_itself_are_json(topics: Settings) -> None:
    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/events?wait=maybe", json=[])
            assert response.status == 400
            assert (await response.json())["error"] == (
                "query parameter wait='maybe': expected true or false"
            )
            response = await client.post("/v1/events?wiat=true", json=[])
            assert response.status == 400
            assert "unknown query parameter 'wiat'" in (await response.json())["error"]
            response = await client.get("/v1/events")
            assert response.status == 405
            assert "GET /v1/events: method not allowed; use POST" == (
                (await response.json())["error"]
            )
            response = await client.get("/v2/events")
            assert response.status == 404
            assert (await response.json())["error"] == "GET /v2/events: Not Found"

    asyncio.run(scenario())


FLOWS = """\
{"flows": [
  {"slug": "checkout", "name": "Checkout", "step_deadline_ms": 30000,
   "steps": [{"sdk_step_key": "reserve-stock"}, {"sdk_step_key": "charge-card"}],
   "edges": [{"source": "reserve-stock", "target": "charge-card"}]},
  {"slug": "refund", "steps": [{"sdk_step_key": "refund-card"}]}
]}
"""


def test_flows_posted_arrive_on_the_flows_topic_for_the_project(topics: Settings) -> None:
    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/flows?project=shop", data=FLOWS)
            assert response.status == 200, await response.text()
            assert await response.json() == {
                "accepted": 2, "flows": ["shop/checkout", "shop/refund"]
            }

    asyncio.run(scenario())
    records = asyncio.run(read_topic(topics, topics.topics.flows))
    flows = {record.key: decode_flow(record.value) for record in records}
    assert set(flows) == {b"shop/checkout", b"shop/refund"}
    checkout = flows[b"shop/checkout"]
    assert checkout.project == "shop" and checkout.step_deadline_ms == 30000
    assert [step.sdk_step_key for step in checkout.steps] == ["reserve-stock", "charge-card"]


def test_bad_flows_are_400_naming_the_field_and_line(topics: Settings) -> None:
    async def scenario() -> None:
        async with running_api(topics) as client:
            bad_edge = FLOWS.replace('"target": "charge-card"', '"target": "ship"')
            response = await client.post("/v1/flows", data=bad_edge)
            assert response.status == 400
            answer = await response.json()
            assert answer["accepted"] == 0
            (error,) = answer["errors"]
            assert error["field"] == "flows[0].edges[0].target" and error["line"] == 4
            assert "'ship' is not one of the flow's steps" in error["problem"]
            assert answer["error"].startswith("invalid flows document: request body:4: ")

            response = await client.post("/v1/flows", data=FLOWS.replace('"name"', '"title"'))
            assert (await response.json())["errors"][0]["field"] == "flows[0].title"

            response = await client.post("/v1/flows?project=", data=FLOWS)
            assert response.status == 400
            assert "project=''" in (await response.json())["error"]

    asyncio.run(scenario())
    assert sum(asyncio.run(topic_end_offsets(topics.kafka_bootstrap, topics.topics.flows))) == 0


def test_a_signal_arrives_keyed_by_its_name(topics: Settings) -> None:
    sent = golden("signal")

    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/signals?wait=true", json=sent)
            assert response.status == 202, await response.text()
            response = await client.post("/v1/signals", json=[{**sent, "name": ""}])
            assert response.status == 400
            assert (await response.json())["errors"][0]["field"] == "name"

    asyncio.run(scenario())
    (record,) = asyncio.run(read_topic(topics, topics.topics.signals))
    assert record.key == b"order.created"
    assert decode_signal(record.value) == decode_signal(json.dumps(sent).encode())


def test_healthz_is_200_while_the_senders_deliver(topics: Settings) -> None:
    async def scenario() -> None:
        async with running_api(topics) as client:
            response = await client.post("/v1/events?wait=true", json=golden_events())
            assert response.status == 202
            response = await client.get("/healthz")
            assert response.status == 200
            answer = await response.json()
            assert answer["status"] == "ok"
            events = answer["senders"]["events"]
            assert events["topic"] == topics.topics.events
            assert events["sent"] == len(EVENT_TYPES) and events["outstanding"] == 0
            assert events["problem"] is None

    asyncio.run(scenario())


def test_healthz_is_503_when_events_are_not_being_acknowledged(topics: Settings) -> None:
    nowhere = EventSender(f"127.0.0.1:{free_port()}", topics.topics.events, close_timeout=0.5)

    async def scenario() -> None:
        # stall_after=0: any event waiting without an acknowledgement is a stall.
        async with running_api(topics, events=nowhere, stall_after=0) as client:
            response = await client.get("/healthz")
            assert response.status == 200  # nothing waiting, nothing to judge yet
            response = await client.post("/v1/events", json=golden("step.started"))
            assert response.status == 202  # queued: the sender retries while Kafka is away
            response = await client.get("/healthz")
            assert response.status == 503
            answer = await response.json()
            assert answer["status"] == "failing"
            assert answer["error"].startswith("events: 1 event(s) waiting and none acknowledged")
            assert answer["senders"]["events"]["outstanding"] == 1
            assert answer["senders"]["signals"]["problem"] is None

    asyncio.run(scenario())


def steplog_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from steplog.server.entry import main; main()", *args]


def test_api_help_lists_its_options() -> None:
    result = subprocess.run(
        steplog_command("api", "--help"), capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert "--host" in result.stdout and "--port" in result.stdout
    assert "127.0.0.1" in result.stdout and "8000" in result.stdout


def test_steplog_api_serves_until_sigterm_then_exits_0(topics: Settings, tmp_path: Path) -> None:
    secret, record = mint_key(Role.INGEST, ["acme"], "test_api")  # the golden events' project
    publish_key(topics, record)
    port = free_port()
    env = child_environment(topics)
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            steplog_command("api", "--port", str(port)), env=env,
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        def healthy() -> bool:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, timeout=60, what="steplog api's /healthz")

        def post_events(headers: dict[str, str]) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/events", data=json.dumps(golden_events()).encode(),
                headers={"Content-Type": "application/json", **headers}, method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post_events({}) == 401  # served with its keys: nothing is open but /healthz
        assert post_events(bearer(secret)) == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    # Answered 202 before SIGTERM: delivered by the time the process exited.
    records = asyncio.run(read_topic(topics, topics.topics.events))
    assert len(records) == len(EVENT_TYPES)


def test_steplog_api_refuses_to_start_without_its_topics(settings: Settings) -> None:
    env = child_environment(settings)  # `settings`, not `topics`: none were created
    result = subprocess.run(
        steplog_command("api", "--port", str(free_port())), env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert f"topic '{settings.topics.events}' does not exist" in result.stderr
    assert "steplog topics ensure" in result.stderr
    assert "Traceback" not in result.stderr
