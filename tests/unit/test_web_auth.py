"""The web service's authentication, its pure parts: sessions (signed ids, expiry, a bound on
how many), where a login may send the browser, and the rule that a route declaring no access
answers 403 to every key. The whole matrix on the real stack: tests/integration/test_web_auth.py.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from steplog.server import web_auth
from steplog.server.principals import Principal, Role
from steplog.server.web_auth import OPEN, Rule, SessionStore, WebAuth, safe_next


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class OneKey:
    """A verifier knowing one key: enough for what is tested here."""

    def verify(self, secret: str) -> Principal | None:
        return Principal("sk_test", Role.READ, frozenset({"a"})) if secret == "good" else None


def test_a_session_lives_until_its_expiry_and_not_after() -> None:
    clock = Clock()
    store = SessionStore(ttl=60, clock=clock)
    cookie, session = store.open("key")
    assert store.find(cookie) is session
    clock.now += 59
    assert store.find(cookie) is session
    clock.now += 1
    assert store.find(cookie) is None and len(store) == 0


def test_a_cookie_with_a_forged_or_missing_signature_names_no_session() -> None:
    store = SessionStore()
    cookie, _ = store.open("key")
    session_id, _, signature = cookie.partition(".")
    assert store.find(session_id) is None
    other_last = "B" if signature.endswith("A") else "A"
    assert store.find(f"{session_id}.{signature[:-1]}{other_last}") is None
    assert store.find(f"other.{signature}") is None
    assert SessionStore().find(cookie) is None  # another process's (or a restarted one's)


def test_ending_a_session_refuses_its_cookie() -> None:
    store = SessionStore()
    cookie, session = store.open("key")
    store.end(session)
    assert store.find(cookie) is None


def test_the_oldest_session_ends_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_auth, "MAX_SESSIONS", 3)
    store = SessionStore()
    cookies = [store.open(f"key-{n}")[0] for n in range(4)]
    assert len(store) == 3
    assert store.find(cookies[0]) is None and store.find(cookies[3]) is not None


def test_login_only_sends_the_browser_to_a_path_of_this_site() -> None:
    assert safe_next("/runs?status=failed") == "/runs?status=failed"
    for target in (None, "", "https://evil.example/", "//evil.example", "/\\evil.example",
                   "runs", "/runs\r\nSet-Cookie: x=1"):
        assert safe_next(target) == "/runs", target


def test_a_route_that_declares_no_rule_is_refused_to_every_key() -> None:
    auth = WebAuth(OneKey())

    async def hello(request: web.Request) -> web.StreamResponse:
        return web.json_response({"hello": True})

    async def scenario() -> None:
        app = web.Application()
        auth.add_to(app)
        app.router.add_get("/forgotten", hello)
        auth.allow(app.router.add_get("/open", hello), Rule(OPEN))
        auth.allow(app.router.add_get("/read", hello), Rule(Role.READ))
        auth.allow(app.router.add_get("/operate", hello), Rule(Role.OPERATE))
        async with TestClient(TestServer(app)) as client:
            good = {"Authorization": "Bearer good"}
            assert (await client.get("/forgotten", headers=good)).status == 403
            assert (await client.get("/open")).status == 200
            assert (await client.get("/read")).status == 401
            assert (await client.get("/read", headers={"Authorization": "Basic x"})).status == 401
            assert (await client.get("/read", headers=good)).status == 200
            refused = await client.get("/operate", headers=good)
            assert refused.status == 403
            assert "needs operate or admin" in (await refused.json())["error"]
            assert (await client.get("/nowhere")).status == 401
            assert (await client.get("/nowhere", headers=good)).status == 404

    asyncio.run(scenario())
