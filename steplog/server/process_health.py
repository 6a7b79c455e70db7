"""The health endpoint of a processors process: `GET /health` on STEPLOG_HEALTH_HOST:PORT, and
the process's Prometheus metrics beside it, `GET /metrics` (steplog/metrics.py; the lag sampled
here is also `steplog_consumer_lag{topic, partition}`).

200 when every check passes, 503 otherwise; the body is JSON either way:
`{"healthy": bool, "checks": [{"name", "healthy", "detail"}, ...]}`. Checks:

- `projection writes`: writes have failed without a success in between, or one write has been
  under way (an engine that does not answer at all never fails a write), for longer than
  STEPLOG_WRITE_STALL_S (the processors' `WriteHealth`);
- `lag`: the events topic's lag of the processors' group, sampled every STEPLOG_LAG_SAMPLE_S,
  has not been 0 and has grown over STEPLOG_LAG_GROWTH_S (steplog/server/lag_trend.py), or could not
  be read for that long.

`steplog status` finds the endpoint through the consumer group (processors/membership.py) and
reports what it answers. The endpoint runs on the processors' event loop: a process stopped or
hung does not answer, which status reports as such (it waits a bounded time).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from aiohttp import web
from aiokafka import TopicPartition

import steplog.kafka as kafka
from steplog.metrics import CONTENT_TYPE, exposition, metrics
from steplog.server.health import Check, group_positions
from steplog.server.lag_trend import LagTrend
from steplog.processors.write_health import WriteHealth
from steplog.settings import Settings

__all__ = ["ProcessHealth", "bind_health_socket"]

log = logging.getLogger("steplog.server.health")


@dataclass
class ProcessHealth:
    """The checks of the module docstring, for one processors process."""

    settings: Settings
    writes: WriteHealth
    clock: Callable[[], float] = time.monotonic
    trend: LagTrend = field(init=False)
    _last_read: float = field(init=False)
    _read_error: str = ""

    def __post_init__(self) -> None:
        self.trend = LagTrend(self.settings.lag_growth_s)
        self._last_read = self.clock()

    def checks(self) -> list[Check]:
        return [self._writes_check(), self._lag_check()]

    def _writes_check(self) -> Check:
        bound = self.settings.write_stall_s
        failing, under_way = self.writes.failing_for(), self.writes.under_way_for()
        if failing > bound:
            return Check("projection writes", False,
                         f"failing for {failing:.0f}s (bound {bound:.0f}s, "
                         f"{self.writes.failures} attempts): {self.writes.last_error}")
        if under_way > bound:
            return Check("projection writes", False,
                         f"one write under way for {under_way:.0f}s (bound {bound:.0f}s): the "
                         "engine does not answer")
        if failing:
            return Check("projection writes", True,
                         f"failing for {failing:.0f}s, within the {bound:.0f}s bound: "
                         f"{self.writes.last_error}")
        return Check("projection writes", True, "succeeding")

    def _lag_check(self) -> Check:
        unread = self.clock() - self._last_read
        if unread > self.settings.lag_growth_s:
            return Check("lag", False, f"not read for {unread:.0f}s: {self._read_error}")
        verdict = self.trend.verdict()
        return Check("lag", not verdict.growing, verdict.detail)

    async def sample_lag(self) -> None:
        """Sample the group's lag until cancelled (a failed sample is retried next time)."""
        settings = self.settings
        admin = kafka.admin_client(settings.kafka_bootstrap)
        # Not subscribed: it only reads the group's committed offsets and the ends.
        offsets = kafka.consumer(settings.kafka_bootstrap, group_id=settings.processors_group,
                                 enable_auto_commit=False)
        try:
            await admin.start()
            await offsets.start()
            while True:
                try:
                    positions = await asyncio.wait_for(
                        group_positions(admin, offsets, settings.topics.events),
                        settings.lag_sample_s * 2,
                    )
                except Exception as exc:  # the broker away: the check says so after a while
                    self._read_error = repr(exc)
                else:
                    self._last_read = self.clock()
                    self.trend.add(self._last_read, _lag(positions))
                await asyncio.sleep(settings.lag_sample_s)
        finally:
            await offsets.stop()
            await admin.close()

    async def serve(self, sock: socket.socket) -> None:
        """Serve GET /health on the bound socket until cancelled."""

        async def health(_: web.Request) -> web.Response:
            checks = self.checks()
            healthy = all(check.healthy for check in checks)
            body = {"healthy": healthy, "checks": [asdict(check) for check in checks]}
            return web.json_response(body, status=200 if healthy else 503)

        async def prometheus(_: web.Request) -> web.Response:
            # Open like /health: bound to STEPLOG_HEALTH_HOST (loopback unless a container's).
            return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", prometheus)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            await asyncio.Event().wait()  # until cancelled
        finally:
            await runner.cleanup()


def _lag(positions: Mapping[TopicPartition, tuple[int, int]]) -> int:
    """The group's lag in all, each partition's set in the metrics (the group's, not this
    process's: every processors process reports the same)."""
    gauge = metrics().consumer_lag
    for tp, (committed, end) in positions.items():
        gauge.labels(tp.topic, str(tp.partition)).set(end - committed)
    return sum(end - committed for committed, end in positions.values())


def bind_health_socket(host: str, port: int) -> socket.socket | None:
    """The health endpoint's listening socket, bound before the consumers join (their client id
    names the port); None when the port is 0 (off) or taken, said in the log: the processors
    run without an endpoint rather than not at all (another processors process on this
    machine has it)."""
    if not port:
        return None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning("health endpoint off: %s:%d is in use (STEPLOG_HEALTH_PORT; another "
                    "processors process on this machine?)", host, port)
        return None
    sock.listen(128)
    sock.setblocking(False)
    return sock
