"""The dashboard's pages: the single-page app Vite built from frontend/ into
steplog/server/dashboard/ (shipped in the wheel, so serving it needs no Node).

Every page route answers the app's index.html, which reads the URL and the JSON API itself;
the URL holds every filter and view, so a link can be shared. `/runs/{run_id}` of an unknown run
answers the same page with status 404 (the page says the run was not found), so a link checker
or a script sees the 404 too (a run of a project the key does not cover is not found alike).
Assets have content hashes in their names: cached for a year; index.html is never cached, so a
new build is seen at the next load.

Who may (steplog/server/web_auth.py): the pages need role read, and a browser without a
session is sent to `/login?next=<the page>`; the login page and the assets (the app's code, no
data) are open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from steplog.server.principals import Role
from steplog.server.read_routes import ReadRoutes
from steplog.server.web_auth import LOGIN_PATH, OPEN, Rule, WebAuth, principal_of, project_scope
from steplog.server.web_errors import NotFound, Unavailable

__all__ = ["DASHBOARD_DIR", "PAGES", "DashboardRoutes"]

DASHBOARD_DIR: Final = Path(__file__).parent / "dashboard"
PAGES: Final = ("/", "/runs", "/ops", "/dead-letters")
_NO_CACHE: Final = {"Cache-Control": "no-cache"}


class DashboardRoutes:
    def __init__(self, reads: ReadRoutes, directory: Path = DASHBOARD_DIR) -> None:
        self.reads = reads
        self.directory = directory

    def add_to(self, app: web.Application, auth: WebAuth) -> None:
        page = Rule(Role.READ, page=True)
        for path in PAGES:
            auth.allow(app.router.add_get(path, self._page), page)
        auth.allow(app.router.add_get("/runs/{run_id}", self._run_page), page)
        auth.allow(app.router.add_get(LOGIN_PATH, self._page), Rule(OPEN))
        assets = self.directory / "assets"
        if assets.is_dir():
            auth.allow(app.router.add_static("/assets", assets, append_version=False),
                       Rule(OPEN))
        app.on_response_prepare.append(_cache_assets)

    def _index(self, status: int = 200) -> web.Response:
        index = self.directory / "index.html"
        if not index.is_file():
            return web.Response(
                status=503, content_type="text/plain", headers=_NO_CACHE,
                text=f"The dashboard is not built ({index} is missing): run `make setup`, "
                "which builds frontend/ with npm. The JSON API under /v1 works without it.",
            )
        return web.Response(
            status=status, body=index.read_bytes(), content_type="text/html",
            charset="utf-8", headers=_NO_CACHE,
        )

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._index()

    async def _run_page(self, request: web.Request) -> web.StreamResponse:
        try:
            await self.reads.detail(request.match_info["run_id"],
                                    project_scope(principal_of(request)))
        except NotFound:
            return self._index(404)
        except Unavailable:
            pass  # the page itself says ClickHouse is away, and retries
        return self._index()


async def _cache_assets(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/assets/") and response.status == 200:
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
