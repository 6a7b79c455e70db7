"""The SDK through a broker outage: the figures behind BENCHMARKS.md's "The SDK through a broker
outage" (the scenario is tests/sender_outage.py, which tests/integration/test_sender_outage.py
asserts on). Starts a broker of its own on a free port, stops it for --outage-s seconds while a
child process sends --rate events a second, starts it again, prints the figures, and stops it.

    .venv/bin/python benchmarks/sender_outage.py                 # 60 s at 1,000 events/s
    .venv/bin/python benchmarks/sender_outage.py --outage-s 20 --rate 200
    .venv/bin/python benchmarks/sender_outage.py --outage-s 300 --rate 2000 --spool
        # longer than the 64 MiB buffer holds: the rest spooled to disk (Client(spool_dir=))
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario lives in tests/

from steplog.server.broker import LocalBroker  # noqa: E402
from steplog.settings import load_settings  # noqa: E402
from steplog.topics import ensure_topics, topic_specs  # noqa: E402
from tests.sender_outage import HostOptions, run_outage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--spool", action="store_true", help="the host spools to disk")
    parser.add_argument("--buffer-mib", type=int, default=64, help="the host's memory buffer")
    args = parser.parse_args()
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="steplog-outage-") as scratch, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        broker = LocalBroker(Path(scratch) / "kafka", port, heap=base.broker_heap,
                             version=base.kafka_version, cache_dir=base.cache_dir)
        broker.start()
        try:
            settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix="outage.",
                                     data_dir=Path(scratch) / "steplog", events_partitions=3)
            asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
            options = HostOptions(max_buffer_bytes=args.buffer_mib * 1024 * 1024,
                                  spool_dir=Path(scratch) / "spool" if args.spool else None)
            figures = run_outage(broker, settings.topics.events, Path(scratch) / "host.log",
                                 rate=args.rate, outage_s=args.outage_s, options=options)
        finally:
            broker.stop()
    print(f"rate {args.rate} events/s, broker stopped {args.outage_s:g} s, 3 partitions, "
          f"{args.buffer_mib} MiB buffer, spool {'on' if args.spool else 'off'}")
    print(f"generated {figures.generated}, sent {figures.sent}, landed {figures.landed} "
          f"({figures.landed_distinct} distinct, {figures.missing} missing), "
          f"dropped {figures.dropped}, failed {figures.failed}, retried {figures.retried}")
    print(f"host CPU: {figures.cpu_before:.1%} of a core before, {figures.cpu_outage:.1%} "
          f"during the outage; backlog drained {figures.drain_s:.1f} s after the broker was back")
    print(f"spooled {figures.spooled_peak} events at the outage's end; slowest send() "
          f"{figures.max_send_ms:.1f} ms; send() raised {len(figures.raised)} times; "
          f"{figures.out_of_order} events landed out of their run's order")
    print(f"on_error: {figures.on_error}; {len(figures.log_lines)} log lines:")
    for line in figures.log_lines:
        print(f"  {line}")


if __name__ == "__main__":
    main()
