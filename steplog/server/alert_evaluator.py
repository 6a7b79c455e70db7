"""The one alert evaluator: reads the signals, runs the pure rules (alert_rules.py), and makes
each transition an event on `<prefix>alerts`, a row of the `alerts` table and a webhook POST.

Who evaluates: every web service runs an `AlertEvaluator` (`steplog dev` and `steplog serve`
do), all members of one consumer group (`<prefix>alerts-evaluator`) on the one-partition alerts
topic; only the member the group gave the partition evaluates. A leader elected by Kafka, not
an idempotent evaluation: two evaluators that each saw a spike would fire two alerts with two
ids, so there must be one; Kafka's group protocol is already there and hands the partition to
another member within the session timeout when the leader dies.

The topic is the state: which alerts are firing is what its records say, in order. A new leader
reads it from the beginning before it evaluates anything, so it carries on the alerts of the
last one (resolves them, never fires them twice). It evaluates only once it has read everything
up to its own last transition, so what it judges against always includes what it sent.

Each record past the group's committed offset is handled once read back: its row written
(the table keeps one row per alert_id and state), its webhooks started, then its offset
committed. Failure protocol: a leader that dies between the row and the commit leaves the
record uncommitted; the next leader writes the same row again (no second row) and POSTs the
webhooks again: webhooks are at least once. A row the engine refuses (ClickHouse down) is
retried at the next tick, from that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiohttp import web

import steplog.kafka as kafka
from steplog.projections.alert_signals import read_alert_signals
from steplog.projections.alerts_table import write_alert
from steplog.projections.read_models import AlertView
from steplog.server.alert_rules import AlertRules, alert_key, evaluate, load_rules
from steplog.server.alert_webhooks import AlertWebhooks
from steplog.server.lag_reader import LagReader
from steplog.server.read_store import ReadStore
from steplog.settings import Settings
from steplog.topics import alerts_topic

__all__ = ["AlertEvaluator", "alerts_group", "evaluating"]

log = logging.getLogger("steplog.alerts")

_POLL_MS: Final = 500


def alerts_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}alerts-evaluator"


class _Leadership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Whether this member holds the partition, and what to read before it may evaluate."""

    def __init__(self, consumer: AIOKafkaConsumer, partition: TopicPartition) -> None:
        self._consumer = consumer
        self._partition = partition
        self.leader = False
        self.caught_up_at = 0
        """The offset to read to before evaluating: the end at election, then past our own
        last transition."""
        self.handled_from = 0
        """Records from this offset on are handled when read (row, webhooks, commit)."""
        self.on_elected: Callable[[], None] = lambda: None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.leader = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self._partition not in assigned:
            return
        consumer, tp = self._consumer, self._partition
        self.handled_from = await consumer.committed(tp) or 0
        self.caught_up_at = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        self.on_elected()
        self.leader = True


class AlertEvaluator:
    def __init__(
        self, settings: Settings, store: ReadStore, lag: LagReader,
        *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._store = store
        self._lag = lag
        self._clock = clock
        self._rules: AlertRules = load_rules(settings.alert_rules_file)
        self._webhooks = AlertWebhooks(settings)
        self._topic = alerts_topic(settings)
        self._partition = TopicPartition(self._topic, 0)
        self.firing: dict[str, AlertView] = {}
        """The alerts firing, by `alert_key`, as the topic says."""
        self._next_evaluation = 0.0

    @property
    def interval(self) -> float:
        return self._settings.alert_interval_s

    async def run(self) -> None:
        """Take part in the election and evaluate while leader, until cancelled."""
        settings = self._settings
        consumer = kafka.consumer(
            settings.kafka_bootstrap, group_id=alerts_group(settings),
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        producer = kafka.producer(settings.kafka_bootstrap, acks="all",
                                  enable_idempotence=True)
        leadership = _Leadership(consumer, self._partition)
        leadership.on_elected = self.firing.clear
        consumer.subscribe([self._topic], listener=leadership)
        await kafka.start(consumer, settings.kafka_bootstrap)
        try:
            await kafka.start(producer, settings.kafka_bootstrap)
            try:
                await self._lead(consumer, producer, leadership)
            finally:
                await producer.stop()
        finally:
            await consumer.stop()
            await self._webhooks.close()

    async def _lead(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, leadership: _Leadership
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The poll is also the wait between evaluations.
            fetched = await consumer.getmany(timeout_ms=_POLL_MS)
            for record in fetched.get(self._partition, []):
                if not await self._read_back(consumer, record, leadership):
                    break
            if not leadership.leader or loop.time() < self._next_evaluation:
                continue
            if await consumer.position(self._partition) < leadership.caught_up_at:
                continue
            self._next_evaluation = loop.time() + self.interval
            for transition in await self._transitions():
                sent = await producer.send_and_wait(
                    self._topic, transition.model_dump_json().encode(),
                    key=alert_key(transition).encode(), partition=0,
                )
                leadership.caught_up_at = sent.offset + 1
                log.info("alert %s: %s", transition.state, transition.summary)

    async def _transitions(self) -> list[AlertView]:
        settings = self._settings
        try:
            lag = (await self._lag.lag()).total
            signals = await self._store.read(lambda client, db: read_alert_signals(
                client, db, at=self._clock(), window=timedelta(seconds=settings.alert_window_s),
                baseline=timedelta(seconds=settings.alert_baseline_s), lag=lag,
            ))
        except Exception as exc:  # the next tick tries again; the web service goes on
            log.warning("alerts not evaluated: cannot read the signals: %s", exc)
            return []
        return evaluate(signals, self._rules, self.firing)

    async def _read_back(
        self, consumer: AIOKafkaConsumer, record: ConsumerRecord[bytes, bytes],
        leadership: _Leadership,
    ) -> bool:
        """Fold `record` into `firing`, and handle it if it is new; False when its row could
        not be written (the consumer is put back on it for the next tick)."""
        try:
            alert = AlertView.model_validate_json(record.value)
        except ValueError as exc:
            log.warning("%s@%d is not an alert, skipped: %s", self._topic, record.offset, exc)
            return True
        if record.offset >= leadership.handled_from and leadership.leader:
            try:
                await self._store.read(
                    lambda client, db: write_alert(client, db, alert)
                )
            except Exception as exc:
                log.warning("alert %s: row not written, retried at the next tick: %s",
                            alert.alert_id, exc)
                consumer.seek(self._partition, record.offset)
                return False
            self._webhooks.send(alert)
            await consumer.commit({self._partition: record.offset + 1})
        key = alert_key(alert)
        if alert.state == "firing":
            self.firing[key] = alert
        elif self.firing.get(key, alert).alert_id == alert.alert_id:
            self.firing.pop(key, None)
        return True


def evaluating(evaluator: AlertEvaluator) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running `evaluator` for the life of a web app. An evaluator that fails
    (Kafka unreachable) is logged and started again after an interval: alerts stop, the web
    service does not."""

    async def run_until_cancelled() -> None:
        while True:
            try:
                await evaluator.run()
            except Exception as exc:
                log.error("alert evaluator stopped, restarting in %g s: %r",
                          evaluator.interval, exc)
                await asyncio.sleep(evaluator.interval)

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run_until_cancelled())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return context
