"""The SQL endpoint against the engine in-process: throughput, first byte, memory, concurrency.

One process plays the store process (the engine on a fresh temporary path, the endpoint on a
thread of its own, as store_process.py runs it) and the clients (plain HTTP over loopback).
Printed, as ratios where there is a goal (issue 22):
- Arrow, ArrowStream and Native reads of a 10M-row result: in-process time / endpoint time
  (goal >= 0.8);
- time to first byte of a 100M-row TSV result (goal <= 50 ms);
- the process's RSS growth while a client reads that result at about 12 MB/s (goal <= 64 MiB);
- ten concurrent `SELECT sleep(1)`, wall time (goal <= 1.5 s);
- a 1 GiB external table (a CSV of numbers made on the fly, streamed with chunked transfer
  encoding) queried with `SELECT count(), sum(x) FROM t`: time, and the process's peak RSS
  growth (VmHWM after a reset) while it is uploaded, spooled and loaded (goal <= 64 MiB).

    .venv/bin/python benchmarks/sql_endpoint.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import chdb

from steplog.server.key_ring import KeyRing, mint_key
from steplog.server.principals import Role
from steplog.server.sql_http import serve_sql
from steplog.server.sql_settings import SqlLimits

WIDE = "SELECT number AS n, number * 2 AS m, toString(number) AS s FROM numbers(10000000)"
LONG = "SELECT number FROM numbers(100000000)"
_connect = cast(Any, chdb).connect


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class Client:
    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"X-ClickHouse-User": "default", "X-ClickHouse-Key": key}

    def open(self, query: str, **params: str) -> tuple[http.client.HTTPConnection,
                                                        http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", "/?" + urllib.parse.urlencode({"query": query, **params}),
                     headers=self.headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()[:300]
        return conn, response

    def read_all(self, query: str, fmt: str) -> int:
        conn, response = self.open(query, default_format=fmt)
        size = 0
        while block := response.read(1 << 20):
            size += len(block)
        conn.close()
        return size


def external_csv(repeats: int, boundary: str) -> Iterator[bytes]:
    """A multipart body: one file part `t` of CSV numbers, then the query's fields."""
    block = "".join(f"{n}\n" for n in range(100_000)).encode()
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"t\"; filename=\"t.csv\""
           "\r\n\r\n").encode()
    for _ in range(repeats):
        yield block
    for name, value in (("t_structure", "x UInt64"), ("t_format", "CSV"),
                        ("query", "SELECT count(), sum(x) FROM t")):
        yield (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
               f"{value}").encode()
    yield f"\r\n--{boundary}--\r\n".encode()


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1])


def best(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upload-mib", type=int, default=1024,
                        help="size of the external table uploaded (MiB of CSV)")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="sql-bench-"))
    engine = _connect(str(path))
    engine.query("CREATE DATABASE IF NOT EXISTS bench")
    ring = KeyRing()
    secret, record = mint_key(Role.ADMIN, None, "benchmark")
    ring.apply(record)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    limits = SqlLimits(600, 8192, 10**9, 64 * 2**30, max_body_bytes=(args.upload_mib + 64) << 20)
    port = 18123
    runner = asyncio.run_coroutine_threadsafe(
        serve_sql(path, "bench", ring, limits, port=port), loop).result(60)
    client = Client(port, secret)
    try:
        for fmt in ("Arrow", "ArrowStream", "Native"):
            local = best(args.rounds, lambda: engine.query(WIDE, fmt).bytes())
            served = best(args.rounds, lambda: client.read_all(WIDE, fmt))
            print(f"{fmt} 10M rows: in-process {local:.3f} s, endpoint {served:.3f} s, "
                  f"ratio {local / served:.2f}x (goal >= 0.8)")

        firsts = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            conn, response = client.open(LONG)
            response.read(1)
            firsts.append(time.perf_counter() - started)
            conn.close()
        print(f"first byte of 100M-row TSV: {statistics.median(firsts) * 1000:.1f} ms "
              "(goal <= 50 ms)")

        before = peak = rss()
        conn, response = client.open(LONG)
        started = time.perf_counter()
        read = 0
        while time.perf_counter() - started < 5:
            read += len(response.read(65536))
            peak = max(peak, rss())
            time.sleep(0.005)
        conn.close()
        print(f"slow reader ({read / 5 / 1e6:.1f} MB/s for 5 s): RSS grew "
              f"{(peak - before) / 2**20:.1f} MiB (goal <= 64 MiB)")

        done: list[float] = []
        def sleep() -> None:
            client.read_all("SELECT sleep(1)", "TSV")
            done.append(time.perf_counter())
        threads = [threading.Thread(target=sleep) for _ in range(10)]
        started = time.perf_counter()
        for each in threads:
            each.start()
        for each in threads:
            each.join()
        print(f"ten concurrent sleep(1): {max(done) - started:.2f} s (goal <= 1.5 s)")

        repeats = (args.upload_mib << 20) // 588_890  # bytes of one block of 100,000 numbers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = status_kib("VmRSS")
        started = time.perf_counter()
        conn.request("POST", "/", body=external_csv(repeats, "BENCHxBOUNDARY"),
                     encode_chunked=True, headers={
                         **client.headers,
                         "Content-Type": "multipart/form-data; boundary=BENCHxBOUNDARY"})
        response = conn.getresponse()
        answer = response.read().decode()
        took = time.perf_counter() - started
        conn.close()
        expected = f"{100_000 * repeats}\t{sum(range(100_000)) * repeats}\n"
        assert (response.status, answer) == (200, expected), answer[:300]
        print(f"external table of {repeats * 588_890 / 2**20:.0f} MiB CSV: {took:.1f} s, "
              f"peak RSS grew {(status_kib('VmHWM') - before) / 1024:.1f} MiB (goal <= 64 MiB)")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        engine.close()


if __name__ == "__main__":
    main()
