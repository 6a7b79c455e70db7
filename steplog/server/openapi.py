"""`GET /v1/openapi.json`: the web service's interface as an OpenAPI 3.1 document.

The response schemas come from the read models themselves (pydantic's JSON Schema of
projections/read_models.py), so the document cannot drift from what the routes answer; the
paths and parameters are listed here, beside the one-line summary each route's module gives.

Security (steplog/server/web_auth.py): every operation needs a key, `Authorization: Bearer` or
the dashboard's session cookie, but those marked `security: []` (/healthz, this document,
/login). Each says which role it needs in its description; 401 is a missing or unknown key,
403 a key without the role or the project.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from pydantic.json_schema import models_json_schema

from steplog.projections.read_models import (
    RUN_STATUS_FILTERS,
    AlertPage,
    DeadLetterPage,
    OpsSummary,
    RunDetail,
    RunPage,
)

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{model}"


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_FILTERS: Final = [
    _query("project", "Only runs of this project."),
    _query("flow", "Only runs of this flow or workflow."),
    _query("status", "Comma-separated statuses: " + ", ".join(RUN_STATUS_FILTERS) + "."),
    _query("since", "Runs created at or after this time (ISO 8601).", type="string",
           format="date-time"),
    _query("until", "Runs created before this time (ISO 8601).", type="string",
           format="date-time"),
    _query("q", "A run id, a run id's prefix (4+ characters), a trigger event's name or id."),
]
_PAGING: Final = [
    _query("cursor", "The `next_cursor` of the previous page."),
    _query("limit", "Items per page.", type="integer", minimum=1, maximum=200, default=50),
]
_RUN_ID: Final = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERROR: Final = {
    "description": "What was wrong and where.",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
    }}},
}
_ACTION: Final = {
    "description": "Done: the request is in the log.",
    "content": {"application/json": {"schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}, "message": {"type": "string"}, "run_id": {"type": "string"},
    }}}},
}
_JSON_ITEMS: Final = {"content": {
    "application/json": {"schema": {"oneOf": [{"type": "array"}, {"type": "object"}]}},
    "application/x-ndjson": {"schema": {"type": "string"}},
}}


def _returns(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model=model)}}}}


_OPEN: Final = "open"


def _operation(summary: str, needs: str, parameters: list[dict[str, Any]], status: str,
               ok: dict[str, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    refusals = () if needs == _OPEN else (401, 403)
    operation: dict[str, Any] = {
        "summary": summary, "parameters": parameters,
        "responses": {status: ok, **{str(code): _ERROR for code in (*refusals, *errors)}},
    }
    if needs == _OPEN:
        operation["security"] = []
        operation["description"] = "Open: no key needed."
    else:
        operation["description"] = f"Needs a key: {needs}."
    return operation


def _get(summary: str, needs: str, parameters: list[dict[str, Any]], ok: dict[str, Any],
         *errors: int) -> dict[str, Any]:
    return {"get": _operation(summary, needs, parameters, "200", ok, errors)}


def _post(summary: str, needs: str, parameters: list[dict[str, Any]], ok: dict[str, Any],
          *errors: int, body: dict[str, Any] | None = None,
          status: str = "200") -> dict[str, Any]:
    operation = _operation(summary, needs, parameters, status, ok, errors)
    if body is not None:
        operation["requestBody"] = body
    return {"post": operation}


_READ: Final = "read (or operate, admin); only the runs of the key's projects"
_OPERATE: Final = "operate (or admin), covering the run's project"
_INGEST: Final = "ingest (or admin), covering every item's project"
_ANY: Final = "any role"
_ME: Final = {"description": "The key.", "content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "key_id": {"type": "string"}, "role": {"type": "string"},
        "projects": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                               {"type": "null"}],
                     "description": "The projects the key covers; null: every project."},
    }}}}}
_LOGIN_BODY: Final = {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["key"], "properties": {
        "key": {"type": "string"}}}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["key"],
                                                     "properties": {
        "key": {"type": "string"}, "next": {"type": "string"}}}},
}}
_SECURITY_SCHEMES: Final = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "A key made by `steplog keys create` (`steplog dev` keeps an "
               "admin key in <data dir>/admin.key)."},
    "session": {"type": "apiKey", "in": "cookie", "name": "steplog_session",
                "description": "The dashboard's session (POST /login); its POSTs also need "
                "the X-CSRF-Token header, the value of the steplog_csrf cookie."},
}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(model, "serialization") for model in (RunPage, RunDetail, OpsSummary, DeadLetterPage,
                                                AlertPage)],
        ref_template=_REF,
    )
    accepted = {"description": "Validated and queued for Kafka.", "content": {
        "application/json": {"schema": {"type": "object"}}}}
    wait = [_query("wait", "Answer once Kafka acknowledged.", type="boolean")]
    paths = {
        "/v1/runs": _get("Runs, newest first, with counts by status.", _READ, _FILTERS + _PAGING,
                         _returns("RunPage", "A page of runs."), 400, 503),
        "/v1/runs/changed": _get(
            "The filter's newest version: poll it, reload the page when it changes.", _READ,
            _FILTERS,
            {"description": "The version.", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"newest_version": {"type": "string"}}}}}},
            400, 503),
        "/v1/runs/{run_id}": _get("One run: its steps, every attempt, graph and links.", _READ,
                                  [_RUN_ID], _returns("RunDetail", "The run."), 404, 503),
        "/v1/runs/{run_id}/cancel": _post(
            "Cancel a run that has not ended.", _OPERATE, [_RUN_ID], _ACTION, 400, 404, 409,
            503, body={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"reason": {"type": "string"}}}}}}),
        "/v1/runs/{run_id}/retrigger": _post(
            "Start a workflow run again from the start; `run_id` is the new run.", _OPERATE,
            [_RUN_ID], _ACTION, 404, 409, 503),
        "/v1/ops": _get("The operations summary (seed 003's escalation signals); dead letters "
                        "counted for keys of every project only.", _READ, [],
                        _returns("OpsSummary", "The summary."), 503),
        "/v1/alerts": _get("The alerts firing now and the newest firings and resolutions, of "
                           "the key's projects (system-wide ones for keys of every project).",
                           _READ, [], _returns("AlertPage", "The alerts."), 503),
        "/v1/dead-letters": _get("Dead letters, newest first.",
                                 "read (or operate, admin) covering every project", _PAGING,
                                 _returns("DeadLetterPage", "A page of dead letters."), 400,
                                 503),
        "/v1/flows": _get("The flows that have runs or definitions.", _READ, [], {
            "description": "Project and flow pairs.", "content": {"application/json": {}}}, 503),
        "/v1/events": _post("Ingest events (JSON array, one object, or NDJSON).", _INGEST, wait,
                            accepted, 400, 413, 503, body=_JSON_ITEMS, status="202"),
        "/v1/signals": _post("Ingest signals (JSON array, one object, or NDJSON).", _INGEST,
                             wait, accepted, 400, 413, 503, body=_JSON_ITEMS, status="202"),
        "/v1/me": _get("The key of the request: its id, role and projects.", _ANY, [], _ME),
        "/login": _post("Open a dashboard session: JSON answers the key, a form 303 to `next`; "
                        "sets the session and CSRF cookies.", _OPEN, [], _ME, 400, 401, 403,
                        body=_LOGIN_BODY),
        "/logout": _post("End the dashboard session.", _ANY, [], {"description": "Ended."}),
        "/healthz": _get("200 while the senders deliver to Kafka.", _OPEN, [],
                         {"description": "Healthy."}, 503),
        "/v1/openapi.json": _get("This document.", _OPEN, [],
                                 {"description": "OpenAPI 3.1."}),
    }
    paths["/v1/flows"].update(_post(
        "Define flows: a flows document {\"flows\": [...]}.",
        "ingest (or admin), covering the project",
        [_query("project", "The project (default STEPLOG_PROJECT).")],
        {"description": "Defined."}, 400, 503,
        body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    ))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Steplog", "version": "1",
                 "description": "Ingestion, runs and operations of a Steplog deployment."},
        "paths": paths,
        "security": [{"bearer": []}, {"session": []}],
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": _SECURITY_SCHEMES},
    }
