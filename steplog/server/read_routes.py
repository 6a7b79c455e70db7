"""The read and actions API of the web service: runs, one run, operations, dead letters, and
the two actions on a run. What the dashboard shows, as JSON (projections/read_models.py).

    GET  /v1/runs                  RunPage: newest first; filters project, flow, status
                                   (comma-separated, derived statuses overdue and stuck too),
                                   since, until (ISO 8601), q (run id, id prefix or trigger
                                   event), cursor, limit (1..200, default 50)
    GET  /v1/runs/changed          {"newest_version"} for the same filters: the auto-refresh's
                                   one cheap query
    GET  /v1/runs/{run_id}         RunDetail; 404 for an unknown run
    POST /v1/runs/{run_id}/cancel  {"reason"} optional; 200 {"ok", "message", "run_id"};
                                   409 when the run already ended
    POST /v1/runs/{run_id}/retrigger  the same; `run_id` of the answer is the new run
    GET  /v1/ops                   OpsSummary
    GET  /v1/dead-letters          DeadLetterPage (cursor, limit)
    GET  /v1/flows                 {"flows": [{"project", "flow"}]}: the flow filter's choices
    GET  /v1/alerts                AlertPage: the alerts firing and the newest transitions
                                   (steplog/server/alert_evaluator.py writes them)

Everything is read from the ClickHouse projections (steplog/server/read_store.py); only the
processors' lag comes from Kafka (steplog/server/lag_reader.py). A malformed parameter is 400
naming it and what it expects.

Who may (steplog/server/web_auth.py): reads need role read, actions operate. Every answer is
limited to the projects the caller's key covers: a run of another project is 404 exactly as a
run that does not exist, lists and counts leave other projects out (`?project=` of another
project lists nothing), and dead letters, which carry no project, are read with a key of every
project only (403 otherwise).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel

from steplog.errors import SendError, WorkflowError
from steplog.projections.alerts_table import alert_page
from steplog.projections.cursors import CursorError
from steplog.projections.dead_letter_reads import dead_letter_page
from steplog.projections.ops_reads import ops_summary
from steplog.projections.queries import RunSummary
from steplog.projections.read_models import RUN_STATUS_FILTERS, RunDetail, RunFilter
from steplog.projections.run_detail_reads import run_detail
from steplog.projections.run_reads import list_flows, list_runs, runs_changed
from steplog.schemas.limits import NAME_MAX_CHARS, control_character_problem
from steplog.server.lag_reader import LagReader
from steplog.server.principals import Role
from steplog.server.read_store import ReadStore
from steplog.server.run_actions import ActionDone, RunActions
from steplog.server.web_auth import Rule, WebAuth, principal_of, project_scope
from steplog.server.web_errors import (
    BadRequest,
    NotFound,
    Unavailable,
    check_query,
    error_response,
    json_response,
)

__all__ = ["ReadRoutes", "run_filter"]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
_FILTERS: Final = ("project", "flow", "status", "since", "until", "q")
_SEARCH_MAX_CHARS: Final = 256
_REASON_MAX_CHARS: Final = 4096


def run_filter(query: Any, projects: tuple[str, ...] | None = None) -> RunFilter:
    """The run list's filters from a query string, within `projects` (the caller's; None:
    every project); BadRequest naming a malformed one."""
    statuses = tuple(s.strip() for s in query.get("status", "").split(",") if s.strip())
    for status in statuses:
        if status not in RUN_STATUS_FILTERS:
            raise BadRequest(
                f"query parameter status={query['status']!r}: {status!r} is not a run status; "
                f"expected a comma-separated list of {', '.join(RUN_STATUS_FILTERS)}"
            )
    search = query.get("q") or None
    if search is not None and len(search) > _SEARCH_MAX_CHARS:
        raise BadRequest(f"query parameter q: {len(search)} characters, expected at most "
                         f"{_SEARCH_MAX_CHARS}")
    return RunFilter(
        project=_name(query, "project"),
        flow=_name(query, "flow"),
        status=statuses,
        since=_instant(query, "since"),
        until=_instant(query, "until"),
        search=search,
        projects=projects,
    )


def _name(query: Any, parameter: str) -> str | None:
    value: str | None = query.get(parameter) or None
    if value is None:
        return None
    problem = control_character_problem(value)
    if problem is None and len(value) > NAME_MAX_CHARS:
        problem = f"{len(value)} characters, expected at most {NAME_MAX_CHARS}"
    if problem is not None:
        raise BadRequest(f"query parameter {parameter}={value!r}: {problem}")
    return value


def _instant(query: Any, parameter: str) -> datetime | None:
    text: str | None = query.get(parameter) or None
    if text is None:
        return None
    try:
        # fromisoformat reads 'Z' since 3.11; a time without an offset is UTC.
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"query parameter {parameter}={text!r}: expected an ISO 8601 time such as "
            "2026-12-06T08:00:00Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _limit(query: Any) -> int:
    text = query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"query parameter limit={text!r}: expected a whole number from 1 to "
                         f"{MAX_LIMIT}")
    return value


def _model(status: int, model: BaseModel) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json(), content_type="application/json"
    )


def run_summary(detail: RunDetail) -> RunSummary:
    """What the actions need of a run, from its detail."""
    run = detail.run
    return RunSummary(
        project=run.project, flow=run.flow, app=run.app, input=detail.input,
        trigger_event=run.trigger_event, trigger_event_id=run.trigger_event_id,
        status=run.recorded_status,
    )


class ReadRoutes:
    def __init__(self, store: ReadStore, lag: LagReader, actions: RunActions | None) -> None:
        self.store = store
        self.lag = lag
        self.actions = actions

    def add_to(self, app: web.Application, auth: WebAuth) -> None:
        read, operate = Rule(Role.READ), Rule(Role.OPERATE)
        router = app.router
        auth.allow(router.add_get("/v1/runs", self._runs), read)
        auth.allow(router.add_get("/v1/runs/changed", self._changed), read)
        auth.allow(router.add_get("/v1/runs/{run_id}", self._run), read)
        auth.allow(router.add_post("/v1/runs/{run_id}/cancel", self._cancel), operate)
        auth.allow(router.add_post("/v1/runs/{run_id}/retrigger", self._retrigger), operate)
        auth.allow(router.add_get("/v1/ops", self._ops), read)
        auth.allow(router.add_get("/v1/dead-letters", self._dead_letters), read)
        auth.allow(router.add_get("/v1/flows", self._flows), read)
        auth.allow(router.add_get("/v1/alerts", self._alerts), read)
        app.on_cleanup.append(self._close)

    async def detail(self, run_id: str, projects: tuple[str, ...] | None) -> RunDetail:
        """The run, if of one of `projects` (None: any); else NotFound, the same whether the
        run is of another project or does not exist."""
        found = await self.store.read(
            lambda client, db: run_detail(client, db, run_id, projects=projects)
        )
        if found is None:
            raise NotFound(f"run {run_id!r} not found in database {self.store.database!r}")
        return found

    async def _runs(self, request: web.Request) -> web.StreamResponse:
        check_query(request, (*_FILTERS, "cursor", "limit"))
        chosen, limit = run_filter(request.query, _scope(request)), _limit(request.query)
        cursor = request.query.get("cursor") or None
        try:
            page = await self.store.read(
                lambda client, db: list_runs(client, db, chosen, cursor=cursor, limit=limit)
            )
        except CursorError as exc:
            raise BadRequest(str(exc)) from None
        return _model(200, page)

    async def _changed(self, request: web.Request) -> web.StreamResponse:
        check_query(request, _FILTERS)
        chosen = run_filter(request.query, _scope(request))
        version = await self.store.read(lambda client, db: runs_changed(client, db, chosen))
        return json_response(200, {"newest_version": version})

    async def _run(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ())
        return _model(200, await self.detail(request.match_info["run_id"], _scope(request)))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        reason = await _reason(request)
        return await self._act(request, lambda actions, run_id, run: actions.cancel(
            run_id, run, reason))

    async def _retrigger(self, request: web.Request) -> web.StreamResponse:
        return await self._act(request, lambda actions, run_id, run: actions.retrigger(
            run_id, run))

    async def _act(self, request: web.Request, action: Any) -> web.StreamResponse:
        check_query(request, ())
        if self.actions is None:
            raise Unavailable("this web service has no Kafka producer for actions")
        run_id = request.match_info["run_id"]
        run = run_summary(await self.detail(run_id, _scope(request)))
        try:
            done: ActionDone = await action(self.actions, run_id, run)
        except WorkflowError as exc:
            return error_response(409, str(exc))
        except SendError as exc:
            raise Unavailable(f"{exc}; nothing was done, retry later") from None
        return json_response(200, {"ok": True, "message": done.message, "run_id": done.run_id})

    async def _ops(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ())
        lag, projects = await self.lag.lag(), _scope(request)
        summary = await self.store.read(
            lambda client, db: ops_summary(client, db, lag=lag, projects=projects)
        )
        return _model(200, summary)

    async def _dead_letters(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ("cursor", "limit"))
        if _scope(request) is not None:
            return error_response(403, "dead letters carry no project: reading them needs a "
                                  "key of every project")
        limit, cursor = _limit(request.query), request.query.get("cursor") or None
        try:
            page = await self.store.read(
                lambda client, db: dead_letter_page(client, db, cursor=cursor, limit=limit)
            )
        except CursorError as exc:
            raise BadRequest(str(exc)) from None
        return _model(200, page)

    async def _flows(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ())
        projects = _scope(request)
        flows = await self.store.read(
            lambda client, db: list_flows(client, db, projects=projects)
        )
        return json_response(
            200, {"flows": [{"project": project, "flow": flow} for project, flow in flows]}
        )

    async def _alerts(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ())
        projects = _scope(request)
        page = await self.store.read(
            lambda client, db: alert_page(client, db, projects=projects)
        )
        return _model(200, page)

    async def _close(self, _: web.Application) -> None:
        await self.lag.close()
        if self.actions is not None:
            self.actions.close()


def _scope(request: web.Request) -> tuple[str, ...] | None:
    """The projects the caller's key covers (None: every project)."""
    return project_scope(principal_of(request))


async def _reason(request: web.Request) -> str | None:
    """The optional `{"reason": "..."}` body of a cancel."""
    body = await request.read()
    if not body.strip():
        return None
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest('request body: expected JSON {"reason": "..."} or nothing') from None
    if not isinstance(document, dict) or set(document) - {"reason"}:
        raise BadRequest('request body: expected JSON {"reason": "..."} or nothing')
    reason = document.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > _REASON_MAX_CHARS):
        raise BadRequest(f"request body: reason must be a string of at most "
                         f"{_REASON_MAX_CHARS} characters")
    return reason
