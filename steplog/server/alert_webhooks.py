"""POSTing alert transitions to webhooks: Steplog's JSON (the `AlertView` itself, as `GET
/v1/alerts` lists it) and Slack's incoming-webhook format (`{"text": ...}`).

A webhook is retried with backoff (tenacity: 4 attempts over about 7 s) and then given up with
a warning in the log; every delivery runs as a task of its own, so a webhook that hangs or fails
never delays the evaluation, nor another webhook.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from steplog.projections.read_models import AlertView
from steplog.settings import Settings

__all__ = ["AlertWebhooks", "slack_body"]

log = logging.getLogger("steplog.alerts")

_ATTEMPTS: Final = 4
_TIMEOUT_S: Final = 10.0


def slack_body(alert: AlertView) -> dict[str, Any]:
    """Slack's incoming-webhook message for `alert`."""
    mark = ":rotating_light: FIRING" if alert.state == "firing" else ":white_check_mark: RESOLVED"
    return {"text": f"{mark} [{alert.rule}] {alert.summary} (Steplog alert {alert.alert_id})"}


def _urls(text: str) -> list[str]:
    return [url.strip() for url in text.split(",") if url.strip()]


class AlertWebhooks:
    def __init__(self, settings: Settings) -> None:
        self._generic = _urls(settings.alert_webhooks)
        self._slack = _urls(settings.alert_slack_webhooks)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, alert: AlertView) -> None:
        """Start delivering `alert` to every webhook; returns at once."""
        body = alert.model_dump(mode="json")
        for url, document in ([(url, body) for url in self._generic]
                              + [(url, slack_body(alert)) for url in self._slack]):
            task = asyncio.create_task(self._post(url, document, alert.alert_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, document: dict[str, Any], alert_id: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S)
            )
        session = self._session
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(_ATTEMPTS), wait=wait_exponential(multiplier=1, max=4),
                reraise=True,
            ):
                with attempt:
                    async with session.post(url, json=document) as response:
                        response.raise_for_status()
        except Exception as exc:  # logged, never raised: evaluation goes on
            log.warning("alert %s: webhook %s failed %d times, given up: %r", alert_id,
                        _redacted(url), _ATTEMPTS, exc)

    async def close(self) -> None:
        """Wait briefly for deliveries under way, then stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        if self._session is not None:
            await self._session.close()


def _redacted(url: str) -> str:
    """The URL without its path: a Slack webhook's path is its secret."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/..."
