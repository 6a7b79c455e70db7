"""The worker: consumes its app's commands, executes runs, commits what is settled.

    app.worker().run()                      # blocking; SIGINT / SIGTERM stop it gracefully
    worker = app.worker(); await worker.start(); ...; await worker.stop()

**Start.** Registers every workflow of the app (`workflow.defined` on the flows topic, one
`trigger.registered` per trigger on the signals topic) and waits for the acknowledgements, then
joins the consumer group `<prefix>worker.<app>` on the commands topic, and the group
`<prefix>worker.<app>.runner.<runner>` on the runner-commands topic.

**Runners.** A worker has a runner name (`runner=`, `steplog worker --runner NAME`; default
the host's name). The commands of runs pinned to a runner (`run_workflow(..., runner=)`) are on
the runner-commands topic, which each runner's workers read in a group of their own and where
they take only their runner's (producers.command_intake): workers of one runner share its
commands, and a runner that starts for the first time reads the topic from its start (its group
has no offsets yet), so the runs pinned to it while it was away wait for it rather than being
lost (the processors show them `overdue` meanwhile: processors/dispatch.py).

**Commands** are consumed by producers.command_intake and carried out by
producers.run_executor (starts, resumes, cancels; passes in producers.run_pass). **Commits**
(the failure protocol) are producers.command_commits: a command is committed once its run has
parked or ended, so a worker that dies leaves every command not done to be delivered again.
The passes write through producers.kafka_run_sink.

**Graceful stop.** Fetching stops; every pass lets its executing steps write their outcome and
stops at the next step boundary, writing `run.interrupted`; those commands are not committed,
so the next worker of the app resumes the runs (a pass whose history shows the interruption
writes `run.resumed` first). A pass still executing after `stop_timeout` is abandoned (its
step will run again). Partitions taken away by a rebalance are handed over the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import steplog.kafka as kafka
from steplog.record_signer import record_signer
from steplog.schemas.codec import encode
from steplog.schemas.record_signing import RecordSigner, signature_headers
from steplog.settings import Settings

from .command_commits import CommandCommits
from .command_intake import CommandIntake
from .kafka_run_sink import KafkaRunSink
from .producer_watch import stop_producer
from .renewable_producer import RenewableProducer
from .run_executor import RunExecutor, RunInFlight, WorkerStats
from .run_log import RunLogReader
from .runner_names import check_runner_name, default_runner_name
from .workflow import ServedApp

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("steplog.worker")

DEFAULT_CONCURRENCY: Final = 200
_ABANDON_GRACE: Final = 10.0


class Worker:
    """Executes the runs of one app (module docstring).

    - concurrency: runs handled at once (fetching pauses while they are all busy).
    - stop_timeout: seconds a graceful stop waits for executing steps before abandoning them.
    - fetch_max_wait_ms: how long the broker may hold a fetch of commands that finds none. A
      fetch returns as soon as a command arrives, so this is not latency; it bounds how long
      a partition resumed (after `concurrency` was reached) waits for the fetch in flight,
      and each empty fetch costs the broker: at 5 ms an idle worker cost it a fifth of a core.
    - linger_ms: the producer's batching delay; 0 writes each checkpoint at once.
    - session_timeout_ms / heartbeat_interval_ms: the consumer group's liveness (a killed
      worker's commands go to another after the session timeout).
    - runner: the runner name (module docstring); default the host's name.
    """

    def __init__(
        self,
        app: ServedApp,
        *,
        settings: Settings | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        stop_timeout: float = 30.0,
        fetch_max_wait_ms: int = 100,
        linger_ms: int = 0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        runner: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(
                f"concurrency: {concurrency} is not a number of runs; expected 1 or more"
            )
        self.app = app
        self.settings = settings or app.settings
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.runner = (
            default_runner_name() if runner is None else check_runner_name(runner, "runner")
        )
        self.group_id = f"{self.settings.topic_prefix}worker.{app.name}"
        self.runner_group_id = f"{self.group_id}.runner.{self.runner}"
        self.stats = WorkerStats()
        self._commits = CommandCommits()
        self._executor = RunExecutor(
            app, self.settings, self._commits, self.stats, lambda: self._stopping, self.runner
        )
        self._intakes = [  # the commands topic's, then the runner-commands topic's
            CommandIntake(app, self.settings, self._executor, self._commits, concurrency)
            for _ in range(2)
        ]
        self._producer: RenewableProducer | None = None
        self._consumers: list[AIOKafkaConsumer] = []
        self._reader: RunLogReader | None = None
        self._sink: KafkaRunSink | None = None
        self._signer: RecordSigner | None = None
        """The worker's own key (`client_key`), which signs its writes (README, Security)."""
        self._fetchers: list[asyncio.Task[None]] = []
        self._committer: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def _runs(self) -> Mapping[str, RunInFlight]:
        """The runs being handled here (tests wait for them to be done)."""
        return self._executor.runs

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Register the app's workflows, then start consuming commands (returns once the
        consumer is started; commands are handled in the background)."""
        if self._started:
            return
        self._started = True
        settings = self.settings
        client_id = f"steplog-worker-{self.app.name}"
        target = kafka.access(settings)

        async def start_producer() -> AIOKafkaProducer:
            producer = kafka.producer(
                target,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.linger_ms,
                max_request_size=settings.max_event_bytes + 64 * 1024,
                **kafka.FAILOVER_PRODUCER_OPTIONS,
            )
            try:
                await kafka.start(producer, target)
            except BaseException:
                await stop_producer(producer)  # releases the half-opened client
                raise
            return producer

        # Replaced when it loses its sequence state (producers.kafka_run_sink says why).
        producer = RenewableProducer(
            start_producer, f"worker {self.app.name!r}", lambda: not self._stopping
        )
        await producer.start()
        self._producer = producer
        self._signer = record_signer(settings)
        self._sink = KafkaRunSink(producer, settings, lambda: self._stopping, self._signer)
        self._executor.sink = self._sink
        try:
            await self._register()
            self._reader = RunLogReader(
                target, settings.topics.events,
                max_event_bytes=settings.max_event_bytes,
            )
            await self._reader.start()
            self._executor.reader = self._reader
            topics = (settings.topics.commands, settings.topics.runner_commands)
            groups = (self.group_id, self.runner_group_id)
            for topic, group_id, intake in zip(topics, groups, self._intakes, strict=True):
                consumer = kafka.consumer(
                    target,
                    client_id=client_id,
                    group_id=group_id,
                    enable_auto_commit=False,
                    # A new group (a runner's first start) reads the topic from its start.
                    auto_offset_reset="earliest",
                    fetch_max_wait_ms=self.fetch_max_wait_ms,
                    session_timeout_ms=self.session_timeout_ms,
                    heartbeat_interval_ms=self.heartbeat_interval_ms,
                    max_partition_fetch_bytes=max(settings.max_event_bytes, 1024 * 1024),
                )
                consumer.subscribe([topic], listener=intake.listener(consumer, self._hand_over))
                await kafka.start(consumer, target)
                self._consumers.append(consumer)
                self._commits.consumers[topic] = consumer
        except BaseException:
            await self._close_clients()
            raise
        for intake, consumer in zip(self._intakes, self._consumers, strict=True):
            fetcher = asyncio.create_task(
                intake.fetch(consumer), name=f"steplog worker {self.app.name}"
            )
            fetcher.add_done_callback(_log_failure)
            self._fetchers.append(fetcher)
        self._committer = asyncio.create_task(
            self._commits.commit_loop(), name="steplog worker commits"
        )
        log.info(
            "worker for app %r (project %r), runner %r, started: %d workflow(s), groups %s "
            "and %s", self.app.name, self.app.project, self.runner, len(self.app.workflows),
            self.group_id, self.runner_group_id,
        )

    async def stop(self) -> None:
        """Stop gracefully (module docstring); idempotent."""
        if not self._started:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        executor = self._executor
        try:
            for fetcher in self._fetchers:
                fetcher.cancel()
            await asyncio.gather(*self._fetchers, return_exceptions=True)
            executor.stop_passes("interrupt", "worker stopped")
            if executor.handlers:
                _, pending = await asyncio.wait(
                    set(executor.handlers), timeout=self.stop_timeout
                )
                if pending:
                    log.warning("%d run(s) still executing after %.0fs: abandoning them",
                                len(pending), self.stop_timeout)
                    executor.stop_passes("abandon", "worker stopped")
                    await asyncio.wait(pending, timeout=_ABANDON_GRACE)
            await self._commits.commit_now()
            if self._committer is not None:
                self._committer.cancel()
                await asyncio.gather(self._committer, return_exceptions=True)
        finally:
            await self._close_clients()
            self._stopped.set()
            log.info("worker for app %r stopped", self.app.name)

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully (blocking)."""
        asyncio.run(self._run_until_signalled())

    async def _run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        # Sync steps run in threads (asyncio.to_thread): enough of them for the runs in flight.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=min(self.concurrency, 256)))
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter, *self._fetchers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            fetch_error = next(
                (fetcher.exception() for fetcher in self._fetchers
                 if fetcher.done() and not fetcher.cancelled()),
                None,
            )
            await self.stop()
        if fetch_error is not None:
            raise fetch_error

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close_clients(self) -> None:
        clients: list[tuple[str, AIOKafkaConsumer | RunLogReader | RenewableProducer | None]] = [
            *(("consumer", consumer) for consumer in self._consumers),
            ("reader", self._reader),
            ("producer", self._producer),
        ]
        for name, client in clients:
            if client is None:
                continue
            try:
                await client.stop()
            except Exception:
                log.exception("stopping the worker's %s failed", name)

    async def _register(self) -> None:
        assert self._producer is not None
        topics, max_bytes = self.settings.topics, self.settings.max_event_bytes
        acks = []
        for definition in self.app.definitions():
            value = encode(definition, max_bytes=max_bytes)
            acks.append(await self._producer.send(
                topics.flows, definition.key.encode(), value,
                signature_headers(self._signer, topics.flows, value),
            ))
        for trigger in self.app.trigger_registrations():
            value = encode(trigger, max_bytes=max_bytes)
            acks.append(await self._producer.send(
                topics.signals, trigger.name.encode(), value,
                signature_headers(self._signer, topics.signals, value),
            ))
        await asyncio.gather(*acks)

    async def _hand_over(self, revoked: set[TopicPartition]) -> None:
        """Partitions are being taken away: stop their runs at a step boundary (interrupted,
        uncommitted: the new owner resumes them), commit what is done, forget the rest."""
        if not revoked:
            return
        await self._executor.hand_over(revoked)
        await self._commits.commit_now()
        self._commits.forget(revoked)
        # Another worker may execute these runs now: what this one wrote is no longer the
        # whole story of any of them (and which runs were on `revoked` is not kept).
        self._executor.forget_fast_starts()
        if self._sink is not None:
            self._sink.forget_writes()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker stopped fetching commands", exc_info=task.exception())
