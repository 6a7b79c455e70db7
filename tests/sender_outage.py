"""The SDK through a broker outage, the scenario shared by tests/integration/test_sender_outage.py
and tests/integration/test_sender_spool.py (which assert on it) and benchmarks/sender_outage.py
(which prints its figures).

A child process plays the host application: an EventSender (the default buffer, or the
HostOptions': a smaller one, a spool dir), sending step events at a fixed rate from a thread,
its log going to stderr the way an application's does by default; it times each send(). The
parent stops the broker for `outage_s` seconds, starts it again on the same port and data dir,
waits until the child has delivered its backlog, and reads the topic back. The child's CPU is
measured by the child (time.process_time: every thread of the host, the SDK's included), so
nothing the parent does counts. `RestartBeside` runs a second scenario in the same outage: a
host with a spool dir killed halfway through it, and another started on the same spool dir.

Child protocol: one command per line on stdin ("stats", "finish"), one JSON line per answer
on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from steplog.server.broker import LocalBroker
from steplog.producers.sender import EventSender
from steplog.producers.spool import Spool
from steplog.projections.log_reader import read_log
from steplog.schemas.events import StepStarted, StepStartedPayload

_ROOT = Path(__file__).resolve().parents[1]
_RUNS = 500
_SPOOL_BYTES = 1024 * 1024 * 1024
# The hosts of RestartBeside number their events far past run_outage's host, and the second
# far past the first.
_BESIDE_FIRST_ID = 1 << 36
_SECOND_HOST_FIRST_ID = 1 << 40


@dataclass(frozen=True)
class HostOptions:
    max_buffer_bytes: int = 64 * 1024 * 1024
    """The sender's memory buffer (its default)."""
    spool_dir: Path | None = None
    first_id: int = 0
    """The host's first event id (event_id): a second host's ids follow the first's."""

    def arguments(self) -> list[str]:
        given = [f"--first-id={self.first_id}", f"--max-buffer-bytes={self.max_buffer_bytes}"]
        if self.spool_dir is not None:
            given.append(f"--spool-dir={self.spool_dir}")
        return given


@dataclass(frozen=True)
class OutageFigures:
    generated: int
    sent: int
    landed: int
    """Records on the topic (a re-sent event may be there twice)."""
    landed_distinct: int
    missing: int
    """Generated event ids not on the topic."""
    dropped: int
    failed: int
    retried: int
    cpu_before: float
    """The host's CPU in the seconds before the outage, in cores."""
    cpu_outage: float
    drain_s: float
    """From the broker answering again to the host's buffer (and spool) being empty."""
    on_error: list[str]
    log_lines: list[str]
    spooled_peak: int = 0
    """Events in the spool when the broker came back."""
    max_send_ms: float = 0.0
    """The longest a send() took in the host."""
    raised: list[str] = field(default_factory=list)
    """What send() raised in the host (nothing, ever)."""
    out_of_order: int = 0
    """Events that landed (first) before an older event of their run."""


def event_id(index: int) -> str:
    """Event ids in uuid4().hex's shape, numbered, so that a gap can be named."""
    return f"{index:032x}"


# ------------------------------------------------------------------- the host (child process)


def run_host(bootstrap: str, topic: str, rate: int, options: HostOptions) -> None:
    """Send `rate` events a second until told to finish; answer commands on stdin."""
    told: list[str] = []
    raised: list[str] = []
    spool = Spool(options.spool_dir, _SPOOL_BYTES) if options.spool_dir else None
    sender = EventSender(bootstrap, topic, on_error=lambda exc: told.append(type(exc).__name__),
                         max_buffer_bytes=options.max_buffer_bytes, spool=spool)
    generated = 0
    slowest = 0.0
    finishing = threading.Event()
    now = datetime.now(UTC)

    def generate() -> None:
        nonlocal generated, slowest
        began = time.monotonic()
        while not finishing.is_set():
            index = options.first_id + generated
            event = StepStarted(
                event_id=event_id(index),
                project="outage",
                flow="checkout",
                run_id=f"run-{index % _RUNS}",
                ts=now,
                seq=index // _RUNS,
                step_key="charge-card",
                payload=StepStartedPayload(input={"n": index}),
            )
            sending = time.perf_counter()
            try:
                sender.send_event(event)
            except Exception as exc:  # never, is the point; counted, not fatal to the host
                raised.append(repr(exc))
            slowest = max(slowest, time.perf_counter() - sending)
            generated += 1
            ahead = began + generated / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def answer(**fields: Any) -> None:
        stats = sender.stats()
        print(json.dumps({"wall": time.monotonic(), "cpu": time.process_time(),
                          "generated": generated, "max_send_ms": slowest * 1000,
                          "raised": raised, **stats.model_dump(), **fields}), flush=True)

    thread = threading.Thread(target=generate, name="host-app")
    thread.start()
    for line in sys.stdin:
        if line.strip() == "stats":
            answer()
        elif line.strip() == "finish":
            finishing.set()
            thread.join()
            sender.flush(timeout=120)
            sender.close()
            answer(on_error=told)
            return


class _Host:
    """The child process, spoken to line by line."""

    def __init__(
        self, bootstrap: str, topic: str, rate: int, log_path: Path, options: HostOptions
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sender_outage", bootstrap, topic, str(rate),
             *options.arguments()],
            cwd=_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True,
        )

    def ask(self, command: str) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise AssertionError(f"the host exited: {self.log_path.read_text()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()


# ------------------------------------------------------------------------------ the scenario


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _cores(first: dict[str, Any], last: dict[str, Any]) -> float:
    return float((last["cpu"] - first["cpu"]) / (last["wall"] - first["wall"]))


async def _landed(bootstrap: str, topic: str) -> list[tuple[bytes, str]]:
    """(run id, event id) of each record, in each partition's order."""
    return [
        (record.key or b"", json.loads(record.value)["event_id"])
        async for record in read_log(bootstrap, topic)
        if record.value is not None
    ]


def _out_of_order(landed: list[tuple[bytes, str]]) -> int:
    """Events whose first landing came after a newer event of their run's."""
    newest: dict[bytes, int] = {}
    seen: set[str] = set()
    late = 0
    for run, event in landed:
        if event in seen:
            continue
        seen.add(event)
        index = int(event, 16)
        if index < newest.get(run, -1):
            late += 1
        newest[run] = max(index, newest.get(run, -1))
    return late


def _drained(host: _Host, rate: int) -> bool:
    stats = host.ask("stats")
    return bool(stats["buffered"] < rate and stats["spooled"] == 0)


def run_outage(
    broker: LocalBroker, topic: str, log_path: Path, *, rate: int = 1000, outage_s: float = 60.0,
    options: HostOptions = HostOptions(), cpu_sample_s: float = 3.0,
    beside: RestartBeside | None = None,
) -> OutageFigures:
    """Events at `rate` a second; the broker stopped for `outage_s` seconds, then started again
    on its port and data dir; the host's figures and the topic read back. The broker and topic
    must exist; the broker runs again when this returns. `beside` runs in the same outage (its
    figures are on it afterwards): one broker restart for both, which costs most of the time."""
    host = _Host(broker.bootstrap, topic, rate, log_path, options)
    try:
        if beside is not None:
            beside.start(broker, topic)
        _wait_until(lambda: host.ask("stats")["sent"] >= 3 * rate, 60, "deliveries before the outage")
        before = host.ask("stats")
        time.sleep(cpu_sample_s)  # the host at work, for its CPU before the outage
        outage_began = host.ask("stats")
        broker.stop()
        # The outage itself: its length is the scenario, not a wait on state.
        time.sleep(outage_s / 2)
        if beside is not None:
            beside.mid_outage()
        time.sleep(outage_s / 2)
        outage_ended = host.ask("stats")
        broker.start()
        back = time.monotonic()
        _wait_until(lambda: _drained(host, rate), 300, "the backlog to drain")
        drain_s = time.monotonic() - back
        final = host.ask("finish")
        host.process.wait(timeout=60)
        if beside is not None:
            _wait_until(beside.drained, 120, "the second host's spool to drain")
            beside.finish()
    finally:
        host.stop()
        if beside is not None:
            beside.stop()
    landed = asyncio.run(_landed(broker.bootstrap, topic))
    if beside is not None:
        beside.landed({event for _, event in landed})
        landed = [(run, event) for run, event in landed if int(event, 16) < _BESIDE_FIRST_ID]
    distinct = {event for _, event in landed}
    return OutageFigures(
        generated=final["generated"],
        sent=final["sent"],
        landed=len(landed),
        landed_distinct=len(distinct),
        missing=sum(1 for index in range(final["generated"])
                    if event_id(options.first_id + index) not in distinct),
        dropped=final["dropped"],
        failed=final["failed"],
        retried=final["retried"],
        cpu_before=_cores(before, outage_began),
        cpu_outage=_cores(outage_began, outage_ended),
        drain_s=drain_s,
        on_error=final["on_error"],
        log_lines=log_path.read_text(errors="replace").splitlines(),
        spooled_peak=outage_ended["spooled"],
        max_send_ms=final["max_send_ms"],
        raised=final["raised"],
        out_of_order=_out_of_order(landed),
    )


@dataclass(frozen=True)
class RestartFigures:
    spooled: set[str]
    """Event ids in the spool when the first host was killed."""
    generated_after: set[str]
    """Event ids the second host sent."""
    second_host_stats: dict[str, Any]
    landed: set[str] = field(default_factory=set)
    """Every event id on the topic."""


class RestartBeside:
    """A second scenario in run_outage's outage: a host with a spool dir, killed halfway
    through it (SIGKILL: no close, no atexit), and a second host on the same spool dir, which
    must send what the spool held once the broker is back."""

    def __init__(self, work: Path, rate: int, max_buffer_bytes: int) -> None:
        self.work = work
        self.rate = rate
        self.options = HostOptions(max_buffer_bytes=max_buffer_bytes, spool_dir=work / "spool",
                                   first_id=_BESIDE_FIRST_ID)
        self.figures: RestartFigures | None = None
        self._spooled: set[str] = set()
        self._host: _Host | None = None

    def start(self, broker: LocalBroker, topic: str) -> None:
        self._bootstrap, self._topic = broker.bootstrap, topic
        self._host = _Host(broker.bootstrap, topic, self.rate, self.work / "first.log",
                           self.options)

    def mid_outage(self) -> None:
        first = self._running()
        generated = first.ask("stats")["generated"]  # a bound on what the spool holds
        first.stop()
        spool = Spool(self.work / "spool", _SPOOL_BYTES)
        self._spooled = {json.loads(value)["event_id"] for _, value in spool.read(2 * generated)}
        spool.close()
        self._host = _Host(self._bootstrap, self._topic, self.rate, self.work / "second.log",
                           replace(self.options, first_id=_SECOND_HOST_FIRST_ID))

    def drained(self) -> bool:
        return _drained(self._running(), self.rate)

    def finish(self) -> None:
        second = self._running()
        final = second.ask("finish")
        second.process.wait(timeout=60)
        self.figures = RestartFigures(
            spooled=self._spooled,
            generated_after={
                event_id(_SECOND_HOST_FIRST_ID + n) for n in range(final["generated"])
            },
            second_host_stats=final,
        )

    def landed(self, events: set[str]) -> None:
        assert self.figures is not None, "finish() first"
        self.figures = replace(self.figures, landed=events)

    def stop(self) -> None:
        if self._host is not None:
            self._host.stop()

    def _running(self) -> _Host:
        assert self._host is not None, "start() first"
        return self._host


def _host_arguments() -> tuple[str, str, int, HostOptions]:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("rate", type=int)
    parser.add_argument("--max-buffer-bytes", type=int, required=True)
    parser.add_argument("--spool-dir", type=Path)
    parser.add_argument("--first-id", type=int, default=0)
    given = parser.parse_args()
    return given.bootstrap, given.topic, given.rate, HostOptions(
        given.max_buffer_bytes, given.spool_dir, given.first_id)


if __name__ == "__main__":
    run_host(*_host_arguments())
