"""`steplog api`: the one web service of Steplog, on one port.

- ingestion, for services that cannot run the Python SDK (steplog/server/ingest.py):
  POST /v1/events, /v1/signals, /v1/flows; GET /healthz;
- the read and actions API (steplog/server/read_routes.py): GET /v1/runs, /v1/runs/{id},
  /v1/ops, /v1/dead-letters, /v1/flows; POST /v1/runs/{id}/cancel | retrigger;
- the dashboard (steplog/server/dashboard_routes.py): /, /runs, /runs/{id}, /ops,
  /dead-letters; and the interface as OpenAPI at /v1/openapi.json;
- this process's Prometheus metrics at /metrics (steplog/metrics.py).

Every request but /healthz, the OpenAPI document, the login page and the dashboard's assets
needs a key (steplog/server/web_auth.py: Bearer for clients, a session cookie for the
dashboard, /login, /logout, /v1/me), checked against the deployment's keys as the keys topic
has them: `web_service` follows it (steplog/server/key_ring.py) and serves no request before it
has read every key there was, so that a valid key is never refused for being new to it.

Errors are JSON everywhere (steplog/server/web_errors.py). `steplog dev` runs the same app in
a thread of its own process (`WebServiceThread`); `steplog api` in the foreground, where
SIGINT/SIGTERM let in-flight requests finish and the senders flush what they accepted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from steplog.errors import SteplogError, TopicError
from steplog.metrics import CONTENT_TYPE, exposition
from steplog.producers.sender import EventSender
from steplog.record_signer import record_signer
from steplog.server.alert_evaluator import AlertEvaluator, evaluating
from steplog.server.dashboard_routes import DASHBOARD_DIR, DashboardRoutes
from steplog.server.ingest import MAX_BODY_BYTES, STALL_AFTER_S, WAIT_TIMEOUT_S, IngestRoutes
from steplog.server.key_ring import KeyRingFollower
from steplog.server.lag_reader import LagReader
from steplog.server.openapi import openapi_document
from steplog.server.principals import KeyVerifier, Role
from steplog.server.read_routes import ReadRoutes
from steplog.server.read_store import ReadStore
from steplog.server.run_actions import RunActions
from steplog.server.web_auth import OPEN, Rule, WebAuth
from steplog.server.web_errors import json_errors, json_response
from steplog.settings import Settings
from steplog.topics import topic_partitions

__all__ = [
    "MAX_BODY_BYTES", "STALL_AFTER_S", "WebServiceThread", "api_app", "serve_api", "web_service",
]

log = logging.getLogger("steplog.server.api")

_STARTUP_CHECK_S: Final = 15.0
_KEYS_CAUGHT_UP_S: Final = 30.0


def api_app(
    settings: Settings,
    events: EventSender,
    signals: EventSender,
    *,
    keys: KeyVerifier,
    reads: ReadRoutes | None = None,
    dashboard_dir: Path = DASHBOARD_DIR,
    max_body_bytes: int = MAX_BODY_BYTES,
    wait_timeout: float = WAIT_TIMEOUT_S,
    stall_after: float = STALL_AFTER_S,
) -> web.Application:
    """The web service over two senders (events, signals), which it owns from now on (its
    cleanup closes them, flushing what they hold); with `reads`, the read API and the
    dashboard too. `keys` decides whose requests are answered."""
    body_limit = max(max_body_bytes, settings.max_event_bytes + 64 * 1024)
    app = web.Application(client_max_size=body_limit, middlewares=[json_errors(body_limit)])
    auth = WebAuth(keys)
    auth.add_to(app)  # inside json_errors: what it refuses is answered as JSON as well
    IngestRoutes(settings, events, signals, body_limit, wait_timeout, stall_after).add_to(
        app, auth
    )
    if reads is not None:
        reads.add_to(app, auth)
        DashboardRoutes(reads, dashboard_dir).add_to(app, auth)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return json_response(200, openapi_document())

    auth.allow(app.router.add_get("/v1/openapi.json", openapi), Rule(OPEN))

    async def prometheus(request: web.Request) -> web.StreamResponse:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    # Its series carry project and flow names: a read key of every project (steplog/metrics.py).
    auth.allow(app.router.add_get("/metrics", prometheus), Rule(Role.READ, every_project=True))
    return app


def web_service(settings: Settings, *, sql_port: int | None = None) -> web.Application:
    """The whole web service for these settings: senders to Kafka, reads from ClickHouse (the
    stack's SQL endpoint on `sql_port` for the embedded engine), the keys from the keys topic
    (followed from the app's startup, which waits until every key is read, to its cleanup)."""

    def report(exc: BaseException) -> None:
        log.warning("sending to Kafka at %s failed (retried when retriable): %r",
                    settings.kafka_bootstrap, exc)

    # The ingest API has checked that the caller's key covers the project: what it accepted
    # is signed with the web service's own key (README, Security).
    signer = record_signer(settings)

    def sender(topic: str) -> EventSender:
        return EventSender(
            settings.kafka_bootstrap, topic, max_event_bytes=settings.max_event_bytes,
            on_error=report, signer=signer,
        )

    reads = ReadRoutes(
        ReadStore(settings, sql_port=sql_port), LagReader(settings), RunActions(settings)
    )
    follower = KeyRingFollower(settings)
    app = api_app(
        settings, sender(settings.topics.events), sender(settings.topics.signals),
        keys=follower.ring, reads=reads,
    )
    app.cleanup_ctx.append(_following(follower))
    if settings.alerts:
        app.cleanup_ctx.append(evaluating(AlertEvaluator(settings, reads.store, reads.lag)))
    return app


def _following(
    follower: KeyRingFollower,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def follow(_: web.Application) -> AsyncIterator[None]:
        follower.start()
        try:
            # KeysError (a SteplogError saying what is in the way) when the keys topic cannot
            # be read in time: the service does not start rather than refuse valid keys.
            await asyncio.to_thread(follower.wait_caught_up, _KEYS_CAUGHT_UP_S)
            yield
        finally:
            await asyncio.to_thread(follower.stop)

    return follow


def serve_api(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the web service in the foreground until SIGINT/SIGTERM, then flush and stop."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(require_topics(settings))
    app = web_service(settings)
    try:
        web.run_app(
            app, host=host, port=port,
            print=lambda _: log.info("steplog web service on http://%s:%d (Kafka at %s, topics "
                                     "%s*)", host, port, settings.kafka_bootstrap,
                                     settings.topic_prefix),
        )
    except OSError as exc:
        raise SteplogError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class WebServiceThread:
    """The web service on a thread and event loop of its own (`steplog dev`): `start` returns
    once it listens (or raises why it cannot), `stop` finishes requests, flushes, and joins."""

    def __init__(self, settings: Settings, *, host: str, port: int, sql_port: int) -> None:
        self.settings, self.host, self.port, self.sql_port = settings, host, port, sql_port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="steplog-web",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except OSError as exc:
            self._halt()
            raise SteplogError(
                f"cannot listen on {self.host}:{self.port} for the web service "
                f"(--api-port): {exc.strerror or exc}"
            ) from None
        except SteplogError:  # the keys could not be read
            self._halt()
            raise

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            web_service(self.settings, sql_port=self.sql_port), handle_signals=False
        )
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self._runner.cleanup()  # the senders it made are closed
            self._runner = None
            raise

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._halt()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def require_topics(settings: Settings) -> None:
    """Refuse to start without the topics: a missing one would otherwise mean silent retries,
    or a broker that auto-creates it with the wrong partition count."""
    names = settings.topics
    for topic in (names.events, names.signals, names.flows, names.keys):
        try:
            await asyncio.wait_for(
                topic_partitions(settings.kafka_bootstrap, topic), _STARTUP_CHECK_S
            )
        except TopicError:
            raise
        except Exception as exc:
            raise TopicError(
                f"cannot check topic {topic!r}: Kafka at {settings.kafka_bootstrap} does not "
                f"answer ({exc!r})"
            ) from None
