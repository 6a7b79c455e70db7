"""What the run states cost in memory and what moving them to disk costs in time
(processors/held_states.py; BENCHMARKS.md, "Run states beyond memory").

No broker, no engine: runs of the pipeline benchmark's shape (5 `run.step` calls around a
no-op, 10 events) are sent by the SDK into a memory sink, decoded and folded as the processors
do, and their states kept in a `HeldStates`, 10,000 runs at a time (a spill after each, as
after a batch). Each budget runs in a child process of its own, so that each RSS is its own:

- memory: the child's RSS after each 10,000 runs, with the states' bytes in memory;
- time: then µs per state for `get` + `put` of new keys and of keys picked at random among
  those held (mostly on disk when the budget is small), each followed by the spills it causes.

    .venv/bin/python benchmarks/state_memory.py --runs 80000 --budgets-mb 4096,16
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time

_PARTITIONS = 6
_CHUNK = 10_000


def _rss_mib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) >> 10
    return 0


def child(runs: int, budget_mb: int, touches: int) -> None:
    from steplog import Client
    from steplog.server.gc_tuning import tune_gc_for_batches
    from steplog.processors.batch_fold import FoldedBatch, HeldRunStates, decode_run_event
    from steplog.processors.held_states import HeldStates
    from steplog.producers.sink import MemorySink

    tune_gc_for_batches()  # as in the processors
    held = HeldStates(budget_mb << 20)
    held.hold(range(_PARTITIONS))
    run_states = HeldRunStates(held)
    sink = MemorySink()
    client = Client(project="bench", sink=sink)
    keys: list[tuple[int, bytes]] = []

    def noop() -> None:
        pass

    print(f"budget {budget_mb} MiB: RSS at start {_rss_mib()} MiB", flush=True)
    for start in range(0, runs, _CHUNK):
        sink.messages.clear()
        for number in range(start, min(start + _CHUNK, runs)):
            run = client.run("checkout", run_id=f"r{number:09d}")
            for step in range(5):
                run.step(f"step-{step}", noop)
        client.flush()
        folded = FoldedBatch({}, run_states.get)
        for offset, (key, value) in enumerate(sink.messages):
            folded.fold(decode_run_event(key, value, 1 << 20), hash(key) % _PARTITIONS, offset)
        folded.add_run_rows()
        run_states.keep(folded)
        keys.extend((partition, state_key) for state_key, (_, partition) in folded.touched.items())
        print(f"  {start + _CHUNK:>8,} runs: RSS {_rss_mib():>5} MiB, states in memory "
              f"{held.bytes_in_memory >> 20:>4} MiB, states held {len(held):,}", flush=True)
    client.close()

    value = held.get(*keys[-1]) or b""
    rng = random.Random(7)
    for name in ("new keys", "random held keys"):
        spent = []
        for round_ in range(3):
            if name == "new keys":
                picked = [(n % _PARTITIONS, f"new-{round_}-{n:09d}".encode())
                          for n in range(touches)]
            else:
                picked = [keys[rng.randrange(len(keys))] for _ in range(touches)]
            began = time.perf_counter()
            for number, (partition, state_key) in enumerate(picked):
                held.get(partition, state_key)
                held.put(partition, state_key, value)
                if number % 1000 == 999:  # a batch
                    held.spill()
            spent.append((time.perf_counter() - began) / touches * 1e6)
        print(f"  get + put, {name}: median of 3 rounds {statistics.median(spent):.2f} µs per "
              f"state ({min(spent):.2f}-{max(spent):.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=80_000)
    parser.add_argument("--budgets-mb", default="4096,16",
                        help="comma-separated STEPLOG_STATE_MEMORY_MB values, one child each")
    parser.add_argument("--touches", type=int, default=50_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.runs, args.child, args.touches)
        return
    print(f"machine: python={sys.version.split()[0]}; {args.runs:,} runs of 5 steps per budget")
    for budget in (int(mb) for mb in args.budgets_mb.split(",")):
        subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--touches",
                        str(args.touches), "--child", str(budget)], check=True)


if __name__ == "__main__":
    main()
