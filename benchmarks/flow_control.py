"""What flow control costs: triggered runs per second without limits, and with a concurrency
limit of --limit per key over --keys keys, in the same run, on the same stack.

Both workflows are the same one-step workflow started by a signal (sent in bulk to the signals
topic, as the web service's /v1/signals does, so that the client's one-call-at-a-time sends are
not what is measured); the limited one declares `concurrency=Concurrency(limit=10,
key="data.key")`, so each of its starts goes through the flow-control topic and its consumer
(processors/flow_control_host.py) and each of its ends frees a slot there. A phase sends
--runs signals (keys round-robin) and ends when `runs_current` shows them all completed;
its rate is runs / (that moment - the first send). --rounds alternate the two phases (the
order flips each round) and the medians are reported, beside the goal: flow control costs at
most 20% of the unthrottled rate.

    .venv/bin/python benchmarks/flow_control.py --runs 20000 --keys 1000 --limit 10

Steplog runs as it is deployed (benchmarks/workflows_vs_dbos.py's stack: a Kafka broker,
`steplog processors` and a worker, each a child process, stopped at the end, also on error);
the client is in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The checkout's root, so that the stack of benchmarks/workflows_vs_dbos.py is importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.workflows_vs_dbos import steplog_stack, wait_until  # noqa: E402

APP = "bench"
FREE = "bench.free"
LIMITED = "bench.limited"
GOAL_COST = 0.20


def trivial(i: int) -> int:
    return i + 1


def build_app(settings: Any = None, *, limit: int = 10) -> Any:
    """The two workflows (the worker, `--worker`, serves them): the same body, one limited."""
    import steplog

    app = steplog.App(APP, settings=settings)

    async def body(ctx: steplog.WorkflowContext) -> int:
        data: Any = ctx.event.data
        result: int = await ctx.step.run("work", trivial, input=int(data["i"]))
        return result

    app.workflow(FREE, triggers=[f"{FREE}.go"])(body)
    app.workflow(LIMITED, triggers=[f"{LIMITED}.go"],
                 concurrency=steplog.Concurrency(limit=limit, key="data.key"))(body)
    return app


def run_worker(limit: int) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    build_app(limit=limit).worker().run()


async def phase(producer: Any, settings: Any, sql: Any, workflow: str, runs: int,
                keys: int) -> float:
    """Start `runs` runs of `workflow` by signal; runs/s until runs_current shows them done."""
    from steplog.schemas.base import new_event_id
    from steplog.schemas.codec import encode
    from steplog.schemas.signals import Signal

    query = ("SELECT count() FROM runs_current WHERE flow = {flow:String} "
             "AND status = 'completed'")
    done_before = int(sql.query(query, parameters={"flow": workflow}).result_rows[0][0])
    name = f"{workflow}.go"
    now = datetime.now(UTC)
    signals = [encode(Signal(event_id=new_event_id(), project=settings.project, name=name,
                             data={"key": f"k{i % keys}", "i": i}, ts=now))
               for i in range(runs)]
    began = time.perf_counter()
    # The signals go out as the web service's /v1/signals sends them (batched, acks=all),
    # not one acknowledged call at a time (`client.send_event`): the client is not measured.
    sent = [await producer.send(settings.topics.signals, value, key=name.encode())
            for value in signals]
    await asyncio.gather(*sent)

    def finished() -> bool:
        done = int(sql.query(query, parameters={"flow": workflow}).result_rows[0][0])
        return done - done_before >= runs

    await asyncio.to_thread(wait_until, finished, timeout=600, what=f"{runs} runs of {workflow}")
    return runs / (time.perf_counter() - began)


async def measure(args: argparse.Namespace, settings: Any) -> tuple[list[float], list[float]]:
    import clickhouse_connect

    import steplog
    import steplog.kafka as kafka
    from steplog.credentials import client_key
    from steplog.server.admin_key import ensure_admin_key

    await asyncio.to_thread(ensure_admin_key, settings)  # the SQL endpoint answers keys only
    client = steplog.Client(settings=settings)
    sql = clickhouse_connect.get_client(
        host="127.0.0.1", port=settings.sql_port, database=settings.clickhouse_database,
        password=client_key(settings) or "",
    )
    producer = kafka.producer(settings.kafka_bootstrap, acks="all", linger_ms=5)
    await kafka.start(producer, settings.kafka_bootstrap)
    try:
        # Warm-up: the worker registers its triggers (a signal before that starts nothing) and
        # joins its group, the processors learn the definitions.
        await _until_triggered(client, sql)
        await phase(producer, settings, sql, FREE, 200, args.keys)
        await _until_starts_are_held_back(settings, client)
        free: list[float] = []
        limited: list[float] = []
        for round_ in range(args.rounds):
            order = [(FREE, free), (LIMITED, limited)]
            for workflow, rates in order if round_ % 2 == 0 else reversed(order):
                rates.append(await phase(producer, settings, sql, workflow, args.runs,
                                         args.keys))
                print(f"round {round_ + 1}: {workflow}: {rates[-1]:,.0f} runs/s", flush=True)
        return free, limited
    finally:
        await producer.stop()
        client.close()
        sql.close()


async def _until_triggered(steplog_client: Any, sql: Any) -> None:
    """Signals until one has started a run that completed."""
    query = f"SELECT count() FROM runs_current WHERE flow = '{FREE}' AND status = 'completed'"
    deadline = time.monotonic() + 120
    while int(sql.query(query).result_rows[0][0]) == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no run of {FREE} completed in 120 s")
        await steplog_client.send_event_async(f"{FREE}.go", {"key": "warm-up", "i": 0})
        await asyncio.sleep(0.5)  # a poll: the count is read again after it


async def _until_starts_are_held_back(settings: Any, steplog_client: Any) -> None:
    """The processors learn the definitions from the flows topic a moment after the worker wrote
    them, and until then a limited start goes as if nothing limited it: limited starts until
    one went through the flow-control topic."""
    from aiokafka import TopicPartition

    import steplog.kafka as kafka

    client = kafka.consumer(settings.kafka_bootstrap)
    await kafka.start(client, settings.kafka_bootstrap)
    try:
        partitions = [TopicPartition(settings.topics.flow_control, p)
                      for p in range(settings.signals_partitions)]
        deadline = time.monotonic() + 120
        while sum((await client.end_offsets(partitions)).values()) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("no start went through the flow-control topic in 120 s")
            await steplog_client.send_event_async(f"{LIMITED}.go", {"key": "warm-up", "i": 0})
            await asyncio.sleep(0.2)  # a poll: the offsets are read again after it
    finally:
        await client.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000,
                        help="runs per phase (20 per key: half of them wait for a slot)")
    parser.add_argument("--keys", type=int, default=1_000, help="keys the runs spread over")
    parser.add_argument("--limit", type=int, default=10, help="concurrency limit per key")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(int(os.environ.get("BENCH_LIMIT", "10")))
        return
    os.environ["BENCH_LIMIT"] = str(args.limit)  # the worker child inherits it
    with tempfile.TemporaryDirectory(prefix="steplog-flow-bench-") as scratch:
        with steplog_stack(Path(scratch), worker=[sys.executable, __file__, "--worker"]) as (
            settings, _pids,
        ):
            free, limited = asyncio.run(measure(args, settings))
    free_rate, limited_rate = statistics.median(free), statistics.median(limited)
    cost = 1 - limited_rate / free_rate
    print(f"\n{args.runs:,} one-step runs per phase, started by signals, {os.cpu_count()} cores")
    print(f"  unthrottled:                                  {free_rate:,.0f} runs/s")
    print(f"  concurrency {args.limit} per key over {args.keys:,} keys:       "
          f"{limited_rate:,.0f} runs/s")
    verdict = "met" if cost <= GOAL_COST else "NOT met"
    print(f"  cost of flow control: {cost:.0%} (goal: at most {GOAL_COST:.0%}: {verdict})")
    # Each round's two phases run back to back: on a machine whose load drifts (other work
    # on the same cores), their ratio moves less than the rates do.
    paired = 1 - statistics.median(lim / fre for fre, lim in zip(free, limited, strict=True))
    print(f"  median of the rounds' own costs: {paired:.0%}")


if __name__ == "__main__":
    main()
