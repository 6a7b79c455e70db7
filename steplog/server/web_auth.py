"""Who may use the web service, and for what: every request carries a key, but a few.

How a request shows its key:
- API clients (services, scripts, curl) send `Authorization: Bearer <key>` with each request;
- the dashboard logs in once: `POST /login` with the key (a form, or JSON `{"key": ...}`) opens
  a session and answers two cookies, `steplog_session` (HttpOnly, SameSite=Strict, Secure over
  https: the session's random id, signed) and `steplog_csrf` (readable by the page's script).
  A state-changing request (POST and the like) authenticated by the session cookie must echo
  the second in an `X-CSRF-Token` header (double submit: another site can make the browser
  send the cookies, not read them); Bearer requests need no token, as no browser adds that
  header by itself. `POST /logout` ends the session.

Sessions are kept in this process's memory, with an absolute expiry (SESSION_TTL_S): a restart
of the web service logs every dashboard out, which is the price of keeping no session store.
A session holds the key it was opened with and verifies it again at every request (a hash and
a lookup in the key ring), so a key revoked after login ends its sessions at their next request.

What each route needs is declared beside the route as it is added (`WebAuth.allow`), and the
middleware refuses what is not declared: a route added without a rule answers 403 for every
key rather than being open by omission. The rules:
- open, without a key: `GET /healthz` (probes of load balancers and orchestrators carry no
  secret; it tells whether the senders deliver, with their counters, nothing of any project),
  `GET /v1/openapi.json` (the interface, public anyway), the login page and the dashboard's
  static assets (the app's code, no data);
- any valid key: `GET /v1/me`, `POST /logout`;
- a role (principals.py): ingest routes need `ingest`, reads `read`, actions `operate`; `admin`
  has them all. Which projects a key covers is each route's business (ingest.py, read_routes.py),
  but for a route whose answer mixes every project (`Rule.every_project`: `GET /metrics`, whose
  series carry project and flow names), which needs a key of every project.

Answers: no key, an unknown or revoked key, an expired session: 401 `{"error": ...}` with
`WWW-Authenticate: Bearer` (a dashboard page redirects to `/login?next=<the page>` instead);
a key without the role: 403. Neither names a project the key does not cover.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from steplog.server.principals import KeyVerifier, Principal, Role
from steplog.server.web_errors import BadRequest, error_response, json_response

__all__ = [
    "ANY_KEY",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "LOGIN_PATH",
    "OPEN",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "Rule",
    "SessionStore",
    "WebAuth",
    "principal_of",
    "project_scope",
    "safe_next",
]

log = logging.getLogger("steplog.server.web_auth")

SESSION_COOKIE: Final = "steplog_session"
CSRF_COOKIE: Final = "steplog_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_TTL_S: Final = 12 * 3600.0
"""A working day: long enough not to interrupt an operator, short enough that a forgotten
browser does not stay logged in for good."""
MAX_SESSIONS: Final = 10_000
"""Sessions held at most; past it the oldest is ended. Only a valid key can open one, so this
bounds what a key holder logging in in a loop can make the process hold."""
LOGIN_PATH: Final = "/login"

OPEN: Final = "open"
"""A route anyone may use, without a key."""
ANY_KEY: Final = "any key"
"""A route any valid key may use, whatever its role."""

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINCIPAL: Final = web.RequestKey("steplog.principal", Principal)
_KEY_MAX_CHARS: Final = 512


@dataclass(frozen=True)
class Rule:
    """What a route needs: OPEN, ANY_KEY or a role; `page` for the dashboard's pages, which
    send a browser without a session to the login page rather than answering 401."""

    needs: Role | Literal["open", "any key"]
    page: bool = False
    every_project: bool = False
    """The answer is about every project: a key restricted to some projects is refused."""


def principal_of(request: web.Request) -> Principal:
    """The principal the middleware found for this request (only on routes that need a key)."""
    return request[_PRINCIPAL]


def project_scope(principal: Principal) -> tuple[str, ...] | None:
    """The projects a key restricts reads to, as RunFilter.projects takes them (None: all)."""
    return None if principal.projects is None else tuple(sorted(principal.projects))


def safe_next(target: str | None) -> str:
    """Where to go after login: a path of this site, never another site (`//evil.example`,
    `/\\evil.example` and absolute URLs are open redirects); the run list otherwise."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/runs"
    if any(ord(character) < 0x20 for character in target):
        return "/runs"
    return target


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    id: str
    key: str
    """The key it was opened with, verified again at every request (see the module docstring):
    held only in this process's memory, as the key ring holds the keys' hashes."""
    csrf: str
    expires_at: float


class SessionStore:
    """The dashboard's sessions, in memory. The cookie is `<id>.<HMAC of the id>`, the HMAC
    keyed by a secret made at start: a cookie not made here is refused before any lookup."""

    def __init__(self, ttl: float = SESSION_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._signing_key = secrets.token_bytes(32)
        self._sessions: dict[str, Session] = {}

    def open(self, key: str) -> tuple[str, Session]:
        """A new session for `key`: the cookie value and the session."""
        now = self.clock()
        for expired in [s for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[expired.id]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]  # the oldest: dicts keep order
        session = Session(secrets.token_urlsafe(32), key, secrets.token_urlsafe(32),
                          now + self.ttl)
        self._sessions[session.id] = session
        return f"{session.id}.{self._sign(session.id)}", session

    def find(self, cookie: str) -> Session | None:
        """The live session a cookie names; None if it is forged, unknown, ended or expired."""
        session_id, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            self.end(session)
            return None
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _sign(self, session_id: str) -> str:
        digest = hmac.new(self._signing_key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# --------------------------------------------------------------------------- the middleware


@dataclass(frozen=True)
class _Caller:
    principal: Principal
    session: Session | None
    """The session the request came with; None for a Bearer request."""


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WebAuth:
    """Authentication and the role check for the whole web service: `middleware` for the app,
    `allow` for each route as it is added, `add_to` for /login, /logout and /v1/me."""

    def __init__(self, keys: KeyVerifier, sessions: SessionStore | None = None) -> None:
        self.keys = keys
        self.sessions = sessions or SessionStore()
        self.rules: dict[tuple[str, str], Rule] = {}

    def allow(self, route: web.AbstractRoute | web.AbstractResource, rule: Rule,
              method: str = "GET") -> None:
        """Declare what `route` (or a resource, for static files: `method`) needs."""
        if isinstance(route, web.AbstractRoute):
            method, resource = route.method, route.resource
        else:
            resource = route
        assert resource is not None and resource.canonical, route
        self.rules[(resource.canonical, method)] = rule

    def rule_for(self, canonical: str, method: str) -> Rule | None:
        return self.rules.get((canonical, "GET" if method == "HEAD" else method))

    def add_to(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware())
        self.allow(app.router.add_post(LOGIN_PATH, self._login), Rule(OPEN))
        self.allow(app.router.add_post("/logout", self._logout), Rule(ANY_KEY))
        self.allow(app.router.add_get("/v1/me", self._me), Rule(ANY_KEY))

    def middleware(self) -> Any:
        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            rule = None if resource is None else self.rule_for(resource.canonical,
                                                               request.method)
            if rule is not None and rule.needs == OPEN:
                return await handler(request)
            try:
                caller = self._caller(request)
            except _Refused as exc:
                if rule is not None and rule.page and request.method in _SAFE_METHODS:
                    next_page = urllib.parse.quote(request.path_qs, safe="")
                    return _see_other(f"{LOGIN_PATH}?next={next_page}")
                return error_response(401, exc.message,
                                      **{"WWW-Authenticate": 'Bearer realm="steplog"'})
            if resource is None:
                return await handler(request)  # no such route: its 404 or 405
            if rule is None:
                log.error("%s %s: the route declares no access rule; refused",
                          request.method, resource.canonical)
                return error_response(403, f"{request.method} {request.path}: not allowed")
            if caller.session is not None and request.method not in _SAFE_METHODS:
                problem = _csrf_problem(request, caller.session)
                if problem is not None:
                    return error_response(403, problem)
            principal = caller.principal
            if isinstance(rule.needs, Role) and not principal.may(rule.needs):
                return error_response(403, _role_refusal(principal, rule.needs, request))
            if rule.every_project and principal.projects is not None:
                return error_response(403, f"{request.method} {request.path}: key "
                                      f"{principal.key_id} covers some projects only; this "
                                      "answers about every project and needs a key of all")
            request[_PRINCIPAL] = principal
            return await handler(request)

        return authenticate

    def _caller(self, request: web.Request) -> _Caller:
        """Who sent the request; _Refused saying what was missing or wrong."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, secret = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise _Refused("Authorization header: expected 'Bearer <key>'")
            principal = self._verify(secret.strip())
            if principal is None:
                raise _Refused("unknown or revoked key")
            return _Caller(principal, None)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise _Refused(f"no key: send 'Authorization: Bearer <key>', or log in at "
                           f"{LOGIN_PATH}")
        session = self.sessions.find(cookie)
        if session is None:
            raise _Refused(f"the session has ended or expired: log in again at {LOGIN_PATH}")
        principal = self._verify(session.key)
        if principal is None:
            self.sessions.end(session)
            raise _Refused(f"the key of this session was revoked: log in again at {LOGIN_PATH}")
        return _Caller(principal, session)

    def _verify(self, secret: str) -> Principal | None:
        if len(secret) > _KEY_MAX_CHARS:
            return None
        return self.keys.verify(secret)

    # ----------------------------------------------------------------------- login, logout, me

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """`POST /login`: JSON `{"key"}` answers 200 with the key's id, role and projects; a
        form (`key`, `next`) answers 303 to `next`, or back to the login page on failure."""
        form = request.content_type in ("application/x-www-form-urlencoded",
                                        "multipart/form-data")
        key, next_page = await _login_fields(request, form)
        if not _same_origin(request):
            # Another site posting a login form (login CSRF: the victim would work, unaware,
            # under the attacker's key).
            return error_response(403, "POST /login from another site's page is refused")
        principal = self._verify(key)
        if principal is None or not principal.may(Role.READ):
            status, problem = (401, "unknown or revoked key") if principal is None else (
                403, f"key {principal.key_id} has role {principal.role}: the dashboard needs "
                "read, operate or admin")
            if form:
                query = urllib.parse.urlencode({"next": safe_next(next_page), "error": problem})
                return _see_other(f"{LOGIN_PATH}?{query}")
            return error_response(status, problem)
        previous = request.cookies.get(SESSION_COOKIE)
        if previous is not None and (old := self.sessions.find(previous)) is not None:
            self.sessions.end(old)
        cookie, session = self.sessions.open(key)
        response = (_see_other(safe_next(next_page)) if form
                    else json_response(200, _me(principal)))
        self._set_cookies(request, response, cookie, session.csrf)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and (session := self.sessions.find(cookie)) is not None:
            self.sessions.end(session)
        response = json_response(200, {"ok": True})
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.del_cookie(name, path="/", secure=request.secure, samesite="Strict")
        return response

    async def _me(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, _me(principal_of(request)))

    def _set_cookies(self, request: web.Request, response: web.StreamResponse, session: str,
                     csrf: str) -> None:
        max_age = int(self.sessions.ttl)
        response.set_cookie(SESSION_COOKIE, session, path="/", max_age=max_age, httponly=True,
                            samesite="Strict", secure=request.secure)
        # Readable by the page's script, which echoes it in X-CSRF-Token.
        response.set_cookie(CSRF_COOKIE, csrf, path="/", max_age=max_age, httponly=False,
                            samesite="Strict", secure=request.secure)


def _me(principal: Principal) -> dict[str, Any]:
    return {"key_id": principal.key_id, "role": str(principal.role),
            "projects": project_scope(principal)}


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _role_refusal(principal: Principal, needs: Role, request: web.Request) -> str:
    granting = [role for role in Role if Principal("", role, None).may(needs)]
    return (f"{request.method} {request.path}: key {principal.key_id} has role "
            f"{principal.role}; this needs {' or '.join(granting)}")


def _csrf_problem(request: web.Request, session: Session) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    cookie = request.cookies.get(CSRF_COOKIE)
    if not header:
        return (f"{request.method} {request.path} with a session cookie needs the "
                f"{CSRF_HEADER} header (the value of the {CSRF_COOKIE} cookie)")
    if cookie is None or not hmac.compare_digest(header, cookie) or not hmac.compare_digest(
            header, session.csrf):
        return f"{CSRF_HEADER}: does not match this session's {CSRF_COOKIE} cookie"
    return None


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST comes from in Origin; no Origin: not a browser's
    cross-site request (curl, a script). Hosts are compared, not schemes: behind a proxy that
    ends TLS the page is https and the request here http."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urllib.parse.urlsplit(origin).netloc == request.host


async def _login_fields(request: web.Request, form: bool) -> tuple[str, str | None]:
    """The key and the page to go to next, from a form or a JSON body; BadRequest naming what
    is missing."""
    if form:
        fields = await request.post()
        key, next_page = fields.get("key"), fields.get("next")
        if not isinstance(next_page, str):
            next_page = None
    else:
        try:
            document = json.loads(await request.read())
        except ValueError:
            raise BadRequest('request body: expected JSON {"key": "..."} or a form with '
                             "a key field") from None
        if not isinstance(document, dict):
            raise BadRequest('request body: expected JSON {"key": "..."}')
        key, next_page = document.get("key"), None
    if not isinstance(key, str) or not key.strip():
        raise BadRequest("request body: key is missing: the key `steplog keys create` printed")
    return key.strip(), next_page
