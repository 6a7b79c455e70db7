"""The web service's read and actions API on the real stack: the processors fold what the SDK
sent, the web service reads it back from the projections through the stack's SQL endpoint.

What a dashboard user relies on: the run list newest first with counts, its filters and cursor;
one run with every attempt of a retried step; clear 400s naming the parameter, 404s for unknown
runs (JSON and page), 409 for actions that make no sense; 503 while ClickHouse is away, and the
same request answering again once it is back without restarting the web service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from steplog.producers.client import Client
from steplog.producers.flows_file import push_flows
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from steplog.server.api import web_service
from steplog.server.key_ring import mint_key, publish_key_async
from steplog.server.principals import Role
from steplog.settings import Settings
from tests.conftest import RunningProcessors, start_processors, wait_for
from tests.integration.web_keys import bearer

WebClient = TestClient[web.Request, web.Application]
STEPS = ("validate", "charge", "ship")


@asynccontextmanager
async def running_web(settings: Settings) -> AsyncIterator[WebClient]:
    """The whole web service, its key ring following the keys topic, every request with an
    admin key published there before the service starts (so its ring has it once serving),
    the key it also reads the SQL endpoint with (STEPLOG_API_KEY)."""
    secret, record = mint_key(Role.ADMIN, None, "test_web_service")
    await publish_key_async(settings, record)
    own = settings.model_copy(update={"api_key": SecretStr(secret)})
    app = web_service(own, sql_port=settings.sql_port)
    async with TestClient(TestServer(app), headers=bearer(secret)) as client:
        yield client


async def get_json(client: WebClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json()


def send_runs(settings: Settings, prefix: str) -> None:
    """Three runs of 'shop': one completes, one fails after a retried charge, one never
    reports 'validate' (missing on the graph) and stays running at 'ship'."""
    push_flows(settings, [FlowDefinition(
        project=settings.project, slug="shop", name="Shop", ts=datetime.now(UTC),
        steps=[FlowStep(sdk_step_key=key) for key in STEPS],
        edges=[FlowEdge(source=a, target=b) for a, b in zip(STEPS, STEPS[1:])],
    )])
    with Client(settings=settings, capture_stack=True) as client:
        ok = client.run("shop", run_id=f"{prefix}-ok")
        for key in STEPS:
            ok.step(key, lambda: {"done": True})
        failed = client.run("shop", run_id=f"{prefix}-failed")
        failed.step("validate", lambda: None)
        for _ in range(2):
            try:
                failed.step("charge", _decline)
            except ValueError:
                pass
        open_run = client.run("shop", run_id=f"{prefix}-open")
        open_run.step("charge", lambda: 1)
        open_run.step("ship").__enter__()  # started, never ended
        assert client.flush(30)


def _decline() -> None:
    raise ValueError("card declined")


def test_runs_detail_filters_and_errors_through_the_web_service(
    processors: RunningProcessors,
) -> None:
    settings, prefix = processors.settings, "web"
    send_runs(settings, prefix)

    async def scenario() -> None:
        async with running_web(settings) as web_client:
            async def three_runs() -> bool:
                page = await get_json(web_client, "/v1/runs?q=web-")
                return len(page["runs"]) == 3

            deadline = asyncio.get_running_loop().time() + 60
            while not await three_runs():
                assert asyncio.get_running_loop().time() < deadline, "runs never listed"
                await asyncio.sleep(0.2)

            page = await get_json(web_client, "/v1/runs")
            created = [run["created_at"] for run in page["runs"]]
            assert created == sorted(created, reverse=True)
            assert page["counts"].get("failed") == 1

            failed = await get_json(web_client, "/v1/runs?status=failed&flow=shop")
            assert [run["run_id"] for run in failed["runs"]] == [f"{prefix}-failed"]

            one = await get_json(web_client, "/v1/runs?limit=1")
            assert one["next_cursor"]
            older = await get_json(web_client, f"/v1/runs?limit=1&cursor={one['next_cursor']}")
            assert older["runs"][0]["run_id"] != one["runs"][0]["run_id"]

            detail = await get_json(web_client, f"/v1/runs/{prefix}-failed")
            charge = next(s for s in detail["steps"] if s["step_key"] == "charge")
            assert [a["attempt"] for a in charge["attempts"]] == [1, 2]
            assert all(a["status"] == "failed" for a in charge["attempts"])
            assert charge["attempts"][0]["error"]["message"] == "card declined"

            opened = await get_json(web_client, f"/v1/runs/{prefix}-open")
            nodes = {node["id"]: node["status"] for node in opened["graph"]["nodes"]}
            assert nodes["validate"] == "missing"

            for path, named in [
                ("/v1/runs?status=broken", "status"),
                ("/v1/runs?cursor=nonsense", "cursor"),
                ("/v1/runs?since=yesterday", "since"),
                ("/v1/runs?limit=0", "limit"),
                ("/v1/runs?colour=red", "colour"),
            ]:
                error = await get_json(web_client, path, 400)
                assert named in error["error"], error

            missing = await get_json(web_client, "/v1/runs/no-such-run", 404)
            assert "no-such-run" in missing["error"]
            page_response = await web_client.get("/runs/no-such-run")
            assert page_response.status == 404

            retrigger = await web_client.post(f"/v1/runs/{prefix}-ok/retrigger")
            assert retrigger.status == 409, await retrigger.text()
            assert "not a workflow run" in (await retrigger.json())["error"]
            cancel = await web_client.post(f"/v1/runs/{prefix}-open/cancel",
                                           json={"reason": "test"})
            assert cancel.status == 200, await cancel.text()

            deadline = asyncio.get_running_loop().time() + 60
            while (await get_json(web_client, f"/v1/runs/{prefix}-open"))["run"][
                    "recorded_status"] != "cancelled":
                assert asyncio.get_running_loop().time() < deadline, "cancel never folded"
                await asyncio.sleep(0.2)
            again = await web_client.post(f"/v1/runs/{prefix}-open/cancel")
            assert again.status == 409

            ops = await get_json(web_client, "/v1/ops")
            assert ops["lag"]["error"] is None and ops["lag"]["total"] is not None
            assert sum(b["failed"] for b in ops["failures"]) >= 1

            document = await get_json(web_client, "/v1/openapi.json")
            assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/ops"} <= set(document["paths"])
            assert "RunDetail" in document["components"]["schemas"]
            assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
            assert document["paths"]["/healthz"]["get"]["security"] == []
            assert "401" in document["paths"]["/v1/runs"]["get"]["responses"]

    asyncio.run(scenario())


def test_clickhouse_away_is_503_and_the_web_service_recovers_by_itself(
    processors: RunningProcessors, tmp_path: Path,
) -> None:
    settings = processors.settings

    async def scenario() -> None:
        async with running_web(settings) as web_client:
            await get_json(web_client, "/v1/runs")
            processors.stop()
            away = await web_client.get("/v1/runs")
            assert away.status == 503
            assert f"127.0.0.1:{settings.sql_port}" in (await away.json())["error"]
            back = await asyncio.to_thread(start_processors, settings, tmp_path / "again.log")
            try:
                await get_json(web_client, "/v1/runs")
            finally:
                back.stop()

    asyncio.run(scenario())


def test_a_time_range_in_the_url_limits_the_runs(processors: RunningProcessors) -> None:
    settings = processors.settings
    send_runs(settings, "range")
    wait_for(lambda: processors.sql.query("SELECT count() FROM runs").result_rows[0][0] >= 3,
             what="runs folded")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    async def scenario() -> None:
        async with running_web(settings) as web_client:
            later = await get_json(web_client, f"/v1/runs?since={future.replace('+', '%2B')}")
            assert later["runs"] == []

    asyncio.run(scenario())
