"""The SQL endpoint served in the test process, and plain HTTP to speak to it.

The endpoint serves the session's chDB engine, which this pytest process owns, on a free port
from a thread with its own event loop, with a real key ring (S1's KeyRing, fed minted keys
instead of the keys topic) holding one key of each role, and one scoped to a project.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from steplog.projections.clickhouse import chdb_path
from steplog.server.key_ring import KeyRing, mint_key
from steplog.server.principals import Role
from steplog.server.sql_http import serve_sql
from steplog.server.sql_settings import SqlLimits
from steplog.settings import Settings
from tests.conftest import free_port


@dataclass
class Keys:
    """A secret of each role (all projects), and a read key scoped to project 'a'."""

    ring: KeyRing = field(default_factory=KeyRing)
    by_role: dict[Role, str] = field(default_factory=dict)
    scoped_read: str = ""

    @classmethod
    def minted(cls) -> Keys:
        keys = cls()
        for role in Role:
            keys.by_role[role] = keys._add(role, None)
        keys.scoped_read = keys._add(Role.READ, ["a"])
        return keys

    def _add(self, role: Role, projects: list[str] | None) -> str:
        secret, record = mint_key(role, projects, f"test {role.value} key")
        self.ring.apply(record)
        return secret

    @property
    def admin(self) -> str:
        return self.by_role[Role.ADMIN]

    @property
    def read(self) -> str:
        return self.by_role[Role.READ]


@dataclass
class Endpoint:
    url: str
    port: int
    database: str
    keys: Keys


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def basic(key: str, user: str = "default") -> dict[str, str]:
    """The Authorization header of HTTP basic auth, as curl -u and most clients send it."""
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def http(
    url: str,
    *,
    key: str | None = None,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> Answer:
    """One plain HTTP exchange, as curl makes it (POST when there is a body); `key` goes as
    basic auth."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    sent = {**(basic(key) if key else {}), **(headers or {})}
    request = urllib.request.Request(f"{url}{path}{query}", data=body, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return Answer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read().decode())


class _ServerThread:
    """serve_sql on a loop of its own in a daemon thread; stop() cleans up and joins."""

    def __init__(self, settings: Settings, keys: Keys, limits: SqlLimits, port: int) -> None:
        path = chdb_path(settings.clickhouse_dsn)
        assert path is not None, "the SQL endpoint serves the embedded engine"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sql-endpoint",
                                       daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        try:
            self.runner = asyncio.run_coroutine_threadsafe(
                serve_sql(path, settings.clickhouse_database, keys.ring, limits, port=port),
                self.loop,
            ).result(timeout=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            if self.runner is not None:
                asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=60)
            assert not self.thread.is_alive(), "the endpoint's event loop did not stop"
            self.loop.close()


@contextmanager
def serving(settings: Settings, limits: SqlLimits | None = None) -> Iterator[Endpoint]:
    """The endpoint on a free port, with freshly minted keys, until the block ends."""
    keys = Keys.minted()
    port = free_port()
    server = _ServerThread(settings, keys, limits or SqlLimits.from_settings(settings), port)
    try:
        yield Endpoint(f"http://127.0.0.1:{port}", port, settings.clickhouse_database, keys)
    finally:
        server.stop()
