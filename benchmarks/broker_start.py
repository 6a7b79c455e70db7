"""How long the local Kafka broker takes to start: cold, warm and restart.

- cold: empty jar cache AND empty Maven local repository, so the ~45 MB really come from Maven
  Central; then format and start. Run once.
- warm: jars cached, fresh data dir, so it includes formatting the storage. Repeated --runs times.
- restart: jars cached, data dir already formatted. Repeated --runs times.

"start" means LocalBroker.start() returned, i.e. the broker answered a metadata request.

    .venv/bin/python benchmarks/broker_start.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steplog.server.broker import LocalBroker, ensure_kafka_jars
from steplog.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of warm and restart")
    parser.add_argument("--skip-cold", action="store_true", help="skip the ~45 MB download")
    args = parser.parse_args()
    settings = load_settings()
    version, heap = settings.kafka_version, settings.broker_heap

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
        f"java={_java_version()} kafka={version} heap={heap}"
    )

    with tempfile.TemporaryDirectory(prefix="steplog-broker-bench-") as scratch:
        root = Path(scratch)
        if not args.skip_cold:
            cache, repo = root / "cold-cache", root / "cold-m2"
            began = time.monotonic()
            ensure_kafka_jars(version, cache, maven_repo=repo)
            download = time.monotonic() - began
            broker = LocalBroker(
                root / "cold-data", _free_port(), heap=heap, version=version, cache_dir=cache
            )
            start, _ = _start_stop(broker)
            print(
                f"cold start:  {download + start:6.2f} s  (jars from Maven Central "
                f"{download:.2f} s + format and start {start:.2f} s)"
            )

        ensure_kafka_jars(version, settings.cache_dir)  # warm and restart: not timed
        warm_starts, warm_stops = [], []
        for run in range(args.runs):
            broker = LocalBroker(
                root / f"warm-{run}", _free_port(), heap=heap, version=version,
                cache_dir=settings.cache_dir,
            )
            start, stop = _start_stop(broker)
            warm_starts.append(start)
            warm_stops.append(stop)
        _report("warm start:", warm_starts)

        broker = LocalBroker(
            root / "restart", _free_port(), heap=heap, version=version,
            cache_dir=settings.cache_dir,
        )
        _start_stop(broker)  # formats the data dir; not timed
        restarts, restart_stops = [], []
        for _ in range(args.runs):
            start, stop = _start_stop(broker)
            restarts.append(start)
            restart_stops.append(stop)
        _report("restart:", restarts)
        _report("stop:", warm_stops + restart_stops)


def _start_stop(broker: LocalBroker) -> tuple[float, float]:
    """Seconds for start() and stop(); the broker is stopped even if start() fails."""
    began = time.monotonic()
    try:
        broker.start()
        started = time.monotonic()
    finally:
        stopping = time.monotonic()
        broker.stop()
        stopped = time.monotonic()
    return started - began, stopped - stopping


def _report(label: str, seconds: list[float]) -> None:
    print(
        f"{label:<12} median {statistics.median(seconds):6.2f} s  min {min(seconds):.2f}  "
        f"max {max(seconds):.2f}  (n={len(seconds)})"
    )


def _java_version() -> str:
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    lines = (result.stderr or result.stdout).splitlines()
    return lines[0].strip() if lines else "unknown"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
