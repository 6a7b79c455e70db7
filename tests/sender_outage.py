"""The SDK through a broker outage, the scenario shared by tests/integration/test_sender_outage.py
(which asserts on it) and benchmarks/sender_outage.py (which prints its figures).

A child process plays the host application: an EventSender with the default buffer, sending
step events at a fixed rate from a thread, its log going to stderr the way an application's
does by default. The parent stops the broker for `outage_s` seconds, starts it again on the
same port and data dir, waits until the child has delivered its backlog, and reads the topic
back. The child's CPU is measured by the child (time.process_time: every thread of the host,
the SDK's included), so nothing the parent does counts.

Child protocol: one command per line on stdin ("stats", "finish"), one JSON line per answer
on stdout.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from steplog.server.broker import LocalBroker
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import read_log
from steplog.schemas.events import StepStarted, StepStartedPayload

_ROOT = Path(__file__).resolve().parents[1]
_RUNS = 500


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
    """From the broker answering again to the host's buffer being empty."""
    on_error: list[str]
    log_lines: list[str]


def event_id(index: int) -> str:
    """Event ids in uuid4().hex's shape, numbered, so that a gap can be named."""
    return f"{index:032x}"


# ------------------------------------------------------------------- the host (child process)


def run_host(bootstrap: str, topic: str, rate: int) -> None:
    """Send `rate` events a second until told to finish; answer commands on stdin."""
    told: list[str] = []
    sender = EventSender(bootstrap, topic, on_error=lambda exc: told.append(type(exc).__name__))
    generated = 0
    finishing = threading.Event()
    now = datetime.now(UTC)

    def generate() -> None:
        nonlocal generated
        began = time.monotonic()
        while not finishing.is_set():
            sender.send_event(
                StepStarted(
                    event_id=event_id(generated),
                    project="outage",
                    flow="checkout",
                    run_id=f"run-{generated % _RUNS}",
                    ts=now,
                    seq=generated // _RUNS,
                    step_key="charge-card",
                    payload=StepStartedPayload(input={"n": generated}),
                )
            )
            generated += 1
            ahead = began + generated / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def answer(**fields: Any) -> None:
        stats = sender.stats()
        print(json.dumps({"wall": time.monotonic(), "cpu": time.process_time(),
                          "generated": generated, **stats.model_dump(), **fields}), flush=True)

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

    def __init__(self, bootstrap: str, topic: str, rate: int, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sender_outage", bootstrap, topic, str(rate)],
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


async def _landed_ids(bootstrap: str, topic: str) -> list[str]:
    return [
        json.loads(record.value)["event_id"]
        async for record in read_log(bootstrap, topic)
        if record.value is not None
    ]


def run_outage(
    broker: LocalBroker, topic: str, log_path: Path, *, rate: int = 1000, outage_s: float = 60.0
) -> OutageFigures:
    """Events at `rate` a second; the broker stopped for `outage_s` seconds, then started again
    on its port and data dir; the host's figures and the topic read back. The broker and topic
    must exist; the broker runs again when this returns."""
    host = _Host(broker.bootstrap, topic, rate, log_path)
    try:
        _wait_until(lambda: host.ask("stats")["sent"] >= 3 * rate, 60, "deliveries before the outage")
        before = host.ask("stats")
        time.sleep(3)  # the host at work, for its CPU before the outage
        outage_began = host.ask("stats")
        broker.stop()
        time.sleep(outage_s)  # the outage itself: its length is the scenario, not a wait on state
        outage_ended = host.ask("stats")
        broker.start()
        back = time.monotonic()
        _wait_until(lambda: host.ask("stats")["buffered"] < rate, 120, "the backlog to drain")
        drain_s = time.monotonic() - back
        final = host.ask("finish")
        host.process.wait(timeout=60)
    finally:
        host.stop()
    landed = asyncio.run(_landed_ids(broker.bootstrap, topic))
    distinct = set(landed)
    return OutageFigures(
        generated=final["generated"],
        sent=final["sent"],
        landed=len(landed),
        landed_distinct=len(distinct),
        missing=sum(1 for index in range(final["generated"]) if event_id(index) not in distinct),
        dropped=final["dropped"],
        failed=final["failed"],
        retried=final["retried"],
        cpu_before=_cores(before, outage_began),
        cpu_outage=_cores(outage_began, outage_ended),
        drain_s=drain_s,
        on_error=final["on_error"],
        log_lines=log_path.read_text(errors="replace").splitlines(),
    )


if __name__ == "__main__":
    run_host(sys.argv[1], sys.argv[2], int(sys.argv[3]))
