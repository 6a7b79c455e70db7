"""What workflow tests share: a watcher of every topic, a worker on its own thread, counters.

Used by the worker tests (which play the processors' part by hand) and by the end-to-end
workflow tests (real processors); not a test module itself.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from steplog.producers.app import App
from steplog.producers.worker import Worker
from steplog.schemas.codec import (
    decode_command,
    decode_event,
    decode_flows_message,
    decode_signals_message,
)
from steplog.schemas.events import Event
from steplog.settings import Settings, child_environment
from tests.conftest import wait_for

# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    message: Any


class LogWatcher:
    """Every message of the events, signals, flows and commands topics from their start,
    decoded, collected by a consumer in a background thread (no consumer group)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        topics = settings.topics
        self._decoders: dict[str, Callable[[bytes], Any]] = {
            topics.events: decode_event,
            topics.signals: decode_signals_message,
            topics.flows: decode_flows_message,
            topics.commands: decode_command,
        }
        self.records: list[Record] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._consume()), daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> LogWatcher:
        self._thread.start()
        assert self._ready.wait(60), "the log watcher did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        try:
            await consumer.start()
            partitions = [
                TopicPartition(topic, p)
                for topic in self._decoders
                for p in (
                    consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
                )
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()

        def decode(topic: str, value: bytes) -> Any:
            return self._decoders[topic](value)

        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=50)
                decoded = [
                    Record(tp.topic, tp.partition, m.offset, m.key, decode(tp.topic, m.value))
                    for tp, messages in batches.items()
                    for m in messages
                ]
                if decoded:
                    with self._changed:
                        self.records.extend(decoded)
                        self._changed.notify_all()
        finally:
            await consumer.stop()

    def on(self, topic: str) -> list[Record]:
        with self._changed:
            return [r for r in self.records if r.topic == topic]

    def events(self, run_id: str) -> list[Event]:
        return [
            r.message for r in self.on(self.settings.topics.events)
            if r.message.run_id == run_id
        ]

    def types(self, run_id: str) -> list[str]:
        return [
            f"{e.type}:{e.step_key}" if hasattr(e, "step_key") else e.type
            for e in self.events(run_id)
        ]

    def record_of(self, run_id: str, event_type: str) -> Record:
        return next(
            r for r in self.on(self.settings.topics.events)
            if r.message.run_id == run_id and r.message.type == event_type
        )

    def wait(self, condition: Callable[[], bool], *, timeout: float = 60, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._changed.wait(min(left, 0.5))

    def wait_for_type(self, run_id: str, event_type: str, *, timeout: float = 60) -> Event:
        self.wait(
            lambda: any(e.type == event_type for e in self._events_unlocked(run_id)),
            timeout=timeout, what=f"{event_type} of run {run_id}",
        )
        return next(e for e in self.events(run_id) if e.type == event_type)

    def _events_unlocked(self, run_id: str) -> list[Any]:
        topic = self.settings.topics.events
        return [r.message for r in self.records if r.topic == topic and r.message.run_id == run_id]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


# --------------------------------------------------------------------------- the worker


class WorkerThread:
    """A worker on an event loop of its own thread, as a test's context manager."""

    def __init__(self, app: App, settings: Settings, **options: Any) -> None:
        self.worker: Worker = app.worker(settings=settings, session_timeout_ms=6000, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopped = False

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.worker.start(), self._loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self.worker.stop(), self._loop).result(120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


class Counter:
    """Calls of step functions by name; thread-safe (sync steps run in threads)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def step(self, name: str, result: Any) -> Callable[..., Any]:
        def fn(*args: Any) -> Any:
            with self._lock:
                self.counts[name] = self.counts.get(name, 0) + 1
            return result

        return fn


CRASHY_APP = '''
import os, time
import steplog

app = steplog.App("shop")
SIDE_EFFECTS = os.environ["TEST_SIDE_EFFECTS"]
RELEASE = os.environ["TEST_RELEASE"]


def effect(name):
    def step():
        with open(SIDE_EFFECTS, "a") as out:
            out.write(name + "\\n")
        if name == "two":
            while not os.path.exists(RELEASE):  # hold the step until the test has killed us
                time.sleep(0.01)
        return name
    return step


@app.workflow("crashy")
async def crashy(ctx):
    return [await ctx.step.run(name, effect(name)) for name in ("one", "two", "three")]
'''


class CrashyWorkers:
    """`steplog worker crashy:app` processes: workflow "crashy" runs steps one, two, three,
    each appending its name to a file (the side effects, counted); step two holds until
    released. The first worker is SIGKILLed in step two, then a second one takes over."""

    def __init__(self, settings: Settings, scratch: Path) -> None:
        # A directory of its own: the worker imports from its cwd, where a folder named like a
        # package (a test's data dir "steplog") would shadow the real one.
        self.directory = directory = scratch / "crashy"
        directory.mkdir()
        (directory / "crashy.py").write_text(CRASHY_APP)
        self.effects, self.release = directory / "effects.txt", directory / "release"
        self.env = {
            **child_environment(settings),
            "TEST_SIDE_EFFECTS": str(self.effects),
            "TEST_RELEASE": str(self.release),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CrashyWorkers:
        self._spawn("first")
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)

    def side_effects(self) -> list[str]:
        return self.effects.read_text().split() if self.effects.exists() else []

    def kill_the_first_in_step_two(self) -> None:
        """SIGKILL the first worker once step two is in flight, then start the second."""
        wait_for(lambda: self.side_effects() == ["one", "two"], what="step two in flight")
        first = self.processes[0]
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        self.release.touch()
        self._spawn("second")

    def stop_the_second(self) -> None:
        second = self.processes[1]
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (self.directory / "second.log").read_text()

    def _spawn(self, name: str) -> None:
        self.processes.append(subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()",
             "worker", "crashy:app"],
            cwd=self.directory, env=self.env,
            stdout=open(self.directory / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
        ))
