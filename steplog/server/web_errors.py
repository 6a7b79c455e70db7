"""How the web service answers what went wrong: JSON errors for every route, one middleware.

Every error is `{"error": "<what was wrong and where>"}` (plus what a route adds, such as the
ingest API's `errors` per item), with the status saying whose fault it was: 400 for a request
that names something wrongly (the message names the parameter and what it expects), 404, 405
with Allow, 413, 503 when a dependency (Kafka, ClickHouse) does not answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "BadRequest",
    "NotFound",
    "Unavailable",
    "check_query",
    "error_response",
    "json_errors",
    "json_response",
    "query_flag",
]

_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})
_RETRY_AFTER_S: Final = "5"


class BadRequest(Exception):
    """A request that is wrong as a whole (not one item of it): answered 400 with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(Exception):
    """What the request names does not exist: answered 404 with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unavailable(Exception):
    """A dependency (ClickHouse, Kafka) does not answer: 503 with `message` and Retry-After,
    since the same request may well succeed once it is back."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def json_response(status: int, body: Mapping[str, Any], **headers: str) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers or None)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return json_response(status, {"error": message}, **headers)


def query_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"query parameter {name}={request.query[name]!r}: expected true or false")


def check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    # A misspelt parameter (?wiat=true) would otherwise be ignored without a word.
    for name in request.query:
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise BadRequest(f"unknown query parameter {name!r}; expected {expected}")


def json_errors(body_limit: int) -> Any:
    """The middleware that turns every failure of a route into its JSON answer."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(400, exc.message)
        except NotFound as exc:
            return error_response(404, exc.message)
        except Unavailable as exc:
            return error_response(503, exc.message, **{"Retry-After": _RETRY_AFTER_S})
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                413,
                f"request body is over the limit of {body_limit} bytes "
                f"({body_limit / 2**20:g} MiB); send it in several requests",
            )
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return error_response(
                405, f"{request.method} {request.path}: method not allowed; use {allowed}",
                Allow=allowed,
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, f"{request.method} {request.path}: {exc.reason}")

    return answer_errors
