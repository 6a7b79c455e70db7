"""Every surface of the web service needs a key, on the real stack: the web service built as
`steplog api` builds it (its key ring following the keys topic), keys minted and revoked on
that topic as `steplog keys` does it, reads through the processors' SQL endpoint.

The matrix: every route of the app x no key, a bad key, a revoked key, a key of each role of
project A, and keys of project B -> the status the route's rule says (steplog/server/
web_auth.py), and nothing of project A seen with B's keys. Then the dashboard's login: the
session cookie, CSRF on its POSTs, logout, a revoked key ending its sessions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from pydantic import SecretStr
from aiohttp.test_utils import TestClient, TestServer

import steplog.schemas
from steplog.projections.log_reader import topic_end_offsets
from steplog.schemas.keys import KeyRecord
from steplog.server.api import web_service
from steplog.server.dashboard_routes import DASHBOARD_DIR
from steplog.server.key_ring import mint_key, publish_key_async
from steplog.server.principals import Role
from steplog.server.web_auth import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from steplog.settings import Settings
from tests.conftest import RunningProcessors, free_port

pytestmark = pytest.mark.integration

WebClient = TestClient[web.Request, web.Application]
EXAMPLES: Final = Path(steplog.schemas.__file__).parent / "examples"
PROJECT: Final = "project-a"
OTHER: Final = "project-b"
FLOW: Final = "matrix-flow"
FLOWS: Final = json.dumps({"flows": [{"slug": FLOW, "steps": [{"sdk_step_key": "one"}]}]})
DEADLINE_S: Final = 60.0

CALLERS: Final = ("none", "bad", "revoked", "ingest", "read", "operate", "admin",
                  "ingest_b", "operate_b")
"""Who calls: no key; a key no ring knows; a revoked read key of A; keys of each role of
project A (admin: every project); an ingest and an operate key of project B."""


def golden(kind: str, **changes: Any) -> dict[str, Any]:
    document = json.loads((EXAMPLES / f"{kind}.json").read_text())
    assert isinstance(document, dict)
    return {**document, **changes}


@dataclass
class Keys:
    secrets: dict[str, str]
    records: dict[str, KeyRecord]

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "none":
            return {}
        if caller == "bad":
            return {"Authorization": "Bearer slk_sk_000000000000_" + "x" * 43}
        return {"Authorization": f"Bearer {self.secrets[caller]}"}


async def mint(settings: Settings, role: Role, projects: list[str] | None) -> tuple[str, KeyRecord]:
    secret, record = mint_key(role, projects, "test_web_auth")
    await publish_key_async(settings, record)
    return secret, record


async def revoke(settings: Settings, record: KeyRecord) -> None:
    await publish_key_async(settings, record.revoked(datetime.now(UTC)))


async def until(condition: Any, what: str) -> None:
    """Wait (with a deadline) until the async `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def me_status(client: WebClient, headers: Mapping[str, str]) -> int:
    response = await client.get("/v1/me", headers=headers)
    return response.status


async def make_keys(settings: Settings, client: WebClient,
                    admin: tuple[str, KeyRecord]) -> Keys:
    project = PROJECT
    made = {
        "revoked": await mint(settings, Role.READ, [project]),
        "ingest": await mint(settings, Role.INGEST, [project]),
        "read": await mint(settings, Role.READ, [project]),
        "operate": await mint(settings, Role.OPERATE, [project]),
        "admin": admin,
        "ingest_b": await mint(settings, Role.INGEST, [OTHER]),
        "operate_b": await mint(settings, Role.OPERATE, [OTHER]),
    }
    keys = Keys({name: secret for name, (secret, _) in made.items()},
                {name: record for name, (_, record) in made.items()})
    for name in made:
        async def known(name: str = name) -> bool:
            return await me_status(client, keys.headers(name)) == 200
        await until(known, f"the web service's ring to know the {name} key")
    await revoke(settings, keys.records["revoked"])

    async def refused() -> bool:
        return await me_status(client, keys.headers("revoked")) == 401
    await until(refused, "the revoke to reach the web service's ring")
    return keys


@asynccontextmanager
async def running_web(
    settings: Settings, sql_port: int
) -> AsyncIterator[tuple[WebClient, tuple[str, KeyRecord]]]:
    """The web service, and the admin key it reads the SQL endpoint with (STEPLOG_API_KEY),
    published before it starts."""
    admin = await mint(settings, Role.ADMIN, None)
    own = settings.model_copy(update={"api_key": SecretStr(admin[0])})
    async with TestClient(TestServer(web_service(own, sql_port=sql_port))) as client:
        yield client, admin


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Cell:
    method: str
    path: str
    route: str
    """The route's pattern, as the app's router names it."""
    statuses: dict[str, int]
    body: Any = None


UNKNOWN: Final = {"none": 401, "bad": 401, "revoked": 401}
PAGE_UNKNOWN: Final = {"none": 303, "bad": 303, "revoked": 303}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


def keyed(status: int) -> dict[str, int]:
    return {**UNKNOWN, **dict.fromkeys(CALLERS[3:], status)}


def ingesting(ok: int) -> dict[str, int]:
    return {**UNKNOWN, "ingest": ok, "read": 403, "operate": 403, "admin": ok,
            "ingest_b": 403, "operate_b": 403}


def reading(ok: int, other: int, unknown: Mapping[str, int] = UNKNOWN) -> dict[str, int]:
    return {**unknown, "ingest": 403, "read": ok, "operate": ok, "admin": ok, "ingest_b": 403,
            "operate_b": other}


def acting(run_id: str) -> dict[str, int]:
    # 409: the run has ended (cancel) / is no workflow run (retrigger): the action was reached.
    return {**UNKNOWN, "ingest": 403, "read": 403, "operate": 409, "admin": 409,
            "ingest_b": 403, "operate_b": 404}


def matrix(run_id: str, asset: str) -> list[Cell]:
    project = PROJECT
    event = golden("step.completed", project=project, run_id=f"{run_id}-more",
                   event_id="matrix-ingested-event")
    signal = golden("signal", project=project)
    pages = [Cell("GET", page, page, reading(200, 200, PAGE_UNKNOWN))
             for page in ("/", "/runs", "/ops", "/dead-letters")]
    return [
        Cell("GET", "/healthz", "/healthz", everyone(200)),
        Cell("GET", "/v1/openapi.json", "/v1/openapi.json", everyone(200)),
        Cell("GET", "/login", "/login", everyone(200)),
        Cell("GET", f"/assets/{asset}", "/assets", everyone(200)),
        Cell("POST", "/login", "/login", {
            "none": 400, "bad": 401, "revoked": 401, "ingest": 403, "read": 200,
            "operate": 200, "admin": 200, "ingest_b": 403, "operate_b": 200}),
        Cell("GET", "/v1/me", "/v1/me", keyed(200)),
        Cell("POST", "/logout", "/logout", keyed(200)),
        Cell("POST", "/v1/events", "/v1/events", ingesting(202), [event]),
        Cell("POST", "/v1/signals", "/v1/signals", ingesting(202), [signal]),
        Cell("POST", f"/v1/flows?project={project}", "/v1/flows", ingesting(200), FLOWS),
        Cell("GET", "/v1/runs", "/v1/runs", reading(200, 200)),
        Cell("GET", "/v1/runs/changed", "/v1/runs/changed", reading(200, 200)),
        Cell("GET", f"/v1/runs/{run_id}", "/v1/runs/{run_id}", reading(200, 404)),
        Cell("POST", f"/v1/runs/{run_id}/cancel", "/v1/runs/{run_id}/cancel", acting(run_id)),
        Cell("POST", f"/v1/runs/{run_id}/retrigger", "/v1/runs/{run_id}/retrigger",
             acting(run_id)),
        Cell("GET", "/v1/ops", "/v1/ops", reading(200, 200)),
        # Dead letters carry no project: only a key of every project reads them.
        Cell("GET", "/v1/dead-letters", "/v1/dead-letters",
             {**reading(403, 403), "admin": 200}),
        Cell("GET", "/v1/flows", "/v1/flows", reading(200, 200)),
        # Metrics carry the names of every project's flows: a key of every project.
        Cell("GET", "/metrics", "/metrics", {**reading(403, 403), "admin": 200}),
        Cell("GET", "/v1/alerts", "/v1/alerts", reading(200, 200)),
        *pages,
        Cell("GET", f"/runs/{run_id}", "/runs/{run_id}", reading(200, 404, PAGE_UNKNOWN)),
    ]


async def call(client: WebClient, cell: Cell, keys: Keys, caller: str) -> tuple[int, str]:
    headers = keys.headers(caller)
    if (cell.method, cell.path) == ("POST", "/login"):
        body = {} if caller == "none" else {"key": keys.headers(caller)["Authorization"][7:]}
        response = await client.post("/login", json=body, allow_redirects=False)
    elif cell.method == "GET":
        response = await client.get(cell.path, headers=headers, allow_redirects=False)
    elif isinstance(cell.body, str):
        response = await client.post(cell.path, data=cell.body, headers=headers,
                                     allow_redirects=False)
    else:
        response = await client.post(cell.path, json=cell.body, headers=headers,
                                     allow_redirects=False)
    client.session.cookie_jar.clear()  # a login's cookie must not authenticate the next cell
    return response.status, await response.text()


def test_every_route_answers_each_key_as_its_rule_says(processors: RunningProcessors) -> None:
    settings = processors.settings
    project, run_id = PROJECT, "matrix-run"
    asset = next((DASHBOARD_DIR / "assets").iterdir()).name

    async def scenario() -> None:
        async with running_web(settings, settings.sql_port) as (client, admin_key):
            keys = await make_keys(settings, client, admin_key)
            admin = keys.headers("admin")
            # An instrumented run (no app): a retrigger is refused 409, nothing starts again.
            started = golden("run.started", project=project, run_id=run_id, event_id="m-1")
            started["payload"] = {**started["payload"], "app": None}
            ended = golden("run.completed", project=project, run_id=run_id, event_id="m-2",
                           flow=started["flow"])
            sent = await client.post("/v1/events?wait=true", json=[started, ended],
                                     headers=admin)
            assert sent.status == 202, await sent.text()

            async def folded() -> bool:
                response = await client.get(f"/v1/runs/{run_id}", headers=admin)
                return response.status == 200 and (await response.json())["run"][
                    "recorded_status"] == "completed"
            await until(folded, f"run {run_id} to be folded")

            cells = matrix(run_id, asset)
            declared = {(route.method, route.resource.canonical)
                        for route in client.app.router.routes()
                        if route.method != "HEAD" and route.resource is not None}
            assert declared == {(cell.method, cell.route) for cell in cells}, (
                "the matrix and the app's routes differ: every route needs its row")

            wrong = []
            for cell in cells:
                for caller in CALLERS:
                    status, text = await call(client, cell, keys, caller)
                    if status != cell.statuses[caller]:
                        wrong.append(f"{cell.method} {cell.path} as {caller}: {status} "
                                     f"(expected {cell.statuses[caller]}): {text[:200]}")
                    if status in (401, 403) and caller != "ingest_b":
                        assert project not in text or caller in ("ingest", "read", "operate"), (
                            f"{cell.method} {cell.path} as {caller} names project {project}")
            assert not wrong, "\n".join(wrong)

            # Project B's keys see nothing of A: not its runs, flows nor ops.
            other = keys.headers("operate_b")
            runs = await (await client.get("/v1/runs", headers=other)).json()
            assert runs["runs"] == [] and runs["counts"] == {}, runs
            flows = await (await client.get("/v1/flows", headers=other)).json()
            assert flows["flows"] == [], flows
            mine = await (await client.get("/v1/flows", headers=keys.headers("read"))).json()
            assert {"project": project, "flow": FLOW} in mine["flows"], mine
            ops = await (await client.get("/v1/ops", headers=other)).json()
            assert ops["failures"] == [] and ops["dead_letters_total"] is None, ops
            # A run of another project is answered as a run that does not exist.
            foreign = await client.get(f"/v1/runs/{run_id}", headers=other)
            absent = await client.get(f"/v1/runs/{run_id}-nope", headers=other)
            assert (await foreign.json())["error"].replace(run_id, "X") == (
                await absent.json())["error"].replace(f"{run_id}-nope", "X")
            # 401 says how to authenticate.
            bare = await client.get("/v1/runs")
            assert bare.headers["WWW-Authenticate"].startswith("Bearer")
            page = await client.get("/runs?status=failed", allow_redirects=False)
            assert page.headers["Location"] == "/login?next=%2Fruns%3Fstatus%3Dfailed"

    asyncio.run(scenario())


def test_an_ingest_key_refuses_a_batch_with_one_item_of_another_project(
    topics: Settings,
) -> None:
    settings = topics
    project = PROJECT
    mine = golden("step.started", project=project, event_id="own-1")
    foreign = golden("step.started", project=OTHER, event_id="foreign-1")
    unknown = golden("step.started", project="no-such-project", event_id="foreign-2")

    async def scenario() -> None:
        async with running_web(settings, free_port()) as (client, _):
            secret, _ = await mint(settings, Role.INGEST, [project])
            headers = {"Authorization": f"Bearer {secret}"}
            await until(lambda: _known(client, headers), "the ring to know the key")
            before = await topic_end_offsets(settings.kafka_bootstrap, settings.topics.events)
            answer = await client.post("/v1/events?wait=true", json=[mine, foreign],
                                       headers=headers)
            assert answer.status == 403, await answer.text()
            body = await answer.json()
            assert body["accepted"] == 0
            assert body["errors"] == [{"index": 1, "field": "project",
                                       "problem": body["errors"][0]["problem"]}]
            assert OTHER in body["errors"][0]["problem"] and "index 1" in body["error"]
            # A project that exists and one that does not are refused alike.
            unknown_answer = await client.post("/v1/events", json=[unknown], headers=headers)
            assert unknown_answer.status == 403
            signal = await client.post("/v1/signals", json=[golden("signal", project=OTHER)],
                                       headers=headers)
            assert signal.status == 403, await signal.text()
            flows = await client.post(f"/v1/flows?project={OTHER}", data=FLOWS,
                                      headers=headers)
            assert flows.status == 403, await flows.text()
            after = await topic_end_offsets(settings.kafka_bootstrap, settings.topics.events)
            assert after == before, "a refused batch half-landed"
            accepted = await client.post("/v1/events?wait=true", json=[mine], headers=headers)
            assert accepted.status == 202, await accepted.text()

    asyncio.run(scenario())


async def _known(client: WebClient, headers: Mapping[str, str]) -> bool:
    return await me_status(client, headers) == 200


# --------------------------------------------------------------------------- the dashboard login


def set_cookie(response: Any, name: str) -> str:
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            return str(header)
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


def test_the_dashboard_logs_in_with_a_session_cookie_and_csrf_protected_posts(
    topics: Settings,
) -> None:
    settings = topics

    async def scenario() -> None:
        # No SQL endpoint behind it: a read reaching its handler answers 503, which is enough
        # to tell that authentication let it through.
        async with running_web(settings, free_port()) as (client, _):
            operate, operate_record = await mint(settings, Role.OPERATE, [PROJECT])
            ingest, _ = await mint(settings, Role.INGEST, None)
            for secret in (operate, ingest):
                await until(lambda secret=secret: _known(client, {
                    "Authorization": f"Bearer {secret}"}), "the ring to know the keys")

            page = await client.get("/ops", allow_redirects=False)
            assert (page.status, page.headers["Location"]) == (303, "/login?next=%2Fops")
            assert (await client.get("/login")).status == 200

            wrong = await client.post("/login", json={"key": "slk_sk_000000000000_nope"})
            assert wrong.status == 401 and "error" in await wrong.json()
            no_dashboard = await client.post("/login", json={"key": ingest})
            assert no_dashboard.status == 403, await no_dashboard.text()
            elsewhere = await client.post("/login", json={"key": operate},
                                          headers={"Origin": "https://evil.example"})
            assert elsewhere.status == 403

            login = await client.post("/login", json={"key": operate})
            assert login.status == 200, await login.text()
            assert (await login.json())["role"] == "operate"
            session_cookie = set_cookie(login, SESSION_COOKIE)
            assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie
            assert "Secure" not in session_cookie  # plain http here; https sets it
            assert "HttpOnly" not in set_cookie(login, CSRF_COOKIE)
            csrf = client.session.cookie_jar.filter_cookies(client.make_url("/"))[CSRF_COOKIE]

            me = await client.get("/v1/me")
            assert (await me.json())["key_id"] == operate_record.key_id
            assert (await client.get("/ops", allow_redirects=False)).status == 200

            cancel = "/v1/runs/some-run/cancel"
            missing = await client.post(cancel)
            assert missing.status == 403 and CSRF_HEADER in (await missing.json())["error"]
            forged = await client.post(cancel, headers={CSRF_HEADER: "forged"})
            assert forged.status == 403
            passed = await client.post(cancel, headers={CSRF_HEADER: csrf.value})
            assert passed.status == 503, await passed.text()  # reached the read store

            out = await client.post("/logout", headers={CSRF_HEADER: csrf.value})
            assert out.status == 200
            assert (await client.get("/v1/me")).status == 401

            # A form login goes where `next` says, never to another site.
            form = await client.post("/login", data={"key": operate, "next": "/runs?q=x"},
                                     allow_redirects=False)
            assert (form.status, form.headers["Location"]) == (303, "/runs?q=x")
            away = await client.post("/login", data={"key": operate, "next": "//evil.example"},
                                     allow_redirects=False)
            assert away.headers["Location"] == "/runs"
            failed = await client.post("/login", data={"key": "nope", "next": "/ops"},
                                       allow_redirects=False)
            assert failed.status == 303 and failed.headers["Location"].startswith(
                "/login?next=%2Fops&error=")

            # Revoking the key ends the session at its next request.
            assert (await client.get("/v1/me")).status == 200
            await revoke(settings, operate_record)

            async def ended() -> bool:
                return (await client.get("/v1/me")).status == 401
            await until(ended, "the revoked key's session to end")
            assert (await client.get("/ops", allow_redirects=False)).status == 303

    asyncio.run(scenario())
