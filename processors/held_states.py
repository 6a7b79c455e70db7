"""States by partition and key as changelog bytes: the most recently put in memory, up to a
budget, the others in `cold_states.ColdStates` on disk.

Every run ever seen keeps its state (a late or duplicated event must fold onto what the run
was, or the rows would regress; with a retention, until it has finished long enough: below),
so without a bound the processors' memory grows with every
run: 25-31 MiB per 10,000 runs in the benchmark (BENCHMARKS.md). Here memory holds at most
`memory_bytes` of states (their bytes and keys, plus a fixed cost per entry); `spill` moves
the least recently put ones out, and `get` brings one back when a batch touches its run again.

Memory wins: a state read back from disk stays there too (deleting it would cost a page
rewrite, about 10 µs, on every read), so disk may hold an older copy of a state in memory;
it is replaced when the state is spilled again, and skipped by `items` and `__len__` (each
partition knows which of its states in memory have a copy on disk, a set no larger than
memory's share). A key that is neither in memory nor on disk costs one indexed read when it
is first asked for (about 2 µs); nothing is read from disk until something was spilled.

Recency is per partition and by `put` (a dict keeps insertion order; `put` moves a key to the
end; a state read back from disk or loaded from the changelog comes in at the end too): `spill`
takes the same share of each partition's oldest states, which for partitions filled evenly by a
hash of the key is close to the oldest overall. It moves a tenth of the budget at a time
(about 10 µs a state: 10,000 states, 0.1 s, at the default 128 MiB, which the holder's event
loop waits for), so it runs once per tenth of the budget's worth of new states.

With a retention (`fold.state_retention.StateRetention`, STEPLOG_STATE_RETENTION), a state put
with its run's end (`put(..., ended_ms=...)`) is indexed by the log time at which it is due, and
`expire` (once per batch) replaces the states due by a closed marker (the run's end in a dozen
bytes: `marked_end`), then deletes the markers due, from memory and disk. The index holds the
ended runs of the window (a key, two numbers and a heap entry each, about 150 bytes, outside the
budget); each partition's log time (`advance_log_time`) is kept beside its states, and stored in
the changelog under `LOG_TIME_KEY`.

The budget counts the states' bytes; the process's RSS grows about twice as fast while states
accumulate (the allocator's own overhead and fragmentation: 80,000 benchmark runs of 1.1 KB
each, 95 MiB of states, took 190 MiB more RSS), and the disk's page cache adds 16 MiB.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from .cold_states import ColdStates
from .fold.state_retention import StateRetention

__all__ = ["LOG_TIME_KEY", "HeldStates", "Loaded", "closed_marker", "marked_end"]

_CLOSED: Final = b"\x00steplog-closed\x00"
"""A closed marker's prefix: no state's bytes start with a NUL (a run state's start with its
format's magic, the names' with pickle's protocol byte)."""
LOG_TIME_KEY: Final = b"\x00steplog-log-time"
"""The changelog key of a partition's log time (8 bytes, big-endian ms); no state key starts
with a NUL (a run's starts with its project, never empty)."""

Loaded = tuple[bytes, bytes | None] | tuple[bytes, bytes | None, int | None]
"""A changelog record to `load`: key, value (None: a tombstone) and the run's end if known."""


def closed_marker(ended: int) -> bytes:
    """What stands for a run whose state left: its end (ms), for the `run closed` rule."""
    return _CLOSED + ended.to_bytes(8, "big", signed=True)


def marked_end(value: bytes) -> int | None:
    """The end a closed marker holds; None for a state."""
    if not value.startswith(_CLOSED):
        return None
    return int.from_bytes(value[len(_CLOSED):], "big", signed=True)

ENTRY_BYTES: Final = 120
"""What an entry costs beyond its key's and value's bytes: two bytes objects' headers (33
bytes each) and a dict slot with its hash (about 50)."""
_SPILL_TO: Final = 0.9
"""`spill` moves states out until memory holds this share of the budget (module docstring)."""


def _cost(key: bytes, value: bytes) -> int:
    """What a state in memory counts against the budget."""
    return len(key) + len(value) + ENTRY_BYTES


@dataclass
class _Partition:
    memory: dict[bytes, bytes] = field(default_factory=dict)
    """States in memory, least recently put first."""
    copied: set[bytes] = field(default_factory=set)
    """Keys in memory with an older copy on disk."""
    absent: set[bytes] = field(default_factory=set)
    """Keys looked for on disk and not there (so that the `put` after a miss reads nothing)."""
    on_disk: int = 0
    """Rows on disk."""
    loading: bool = False
    spilled_while_loading: bool = False
    log_ms: int = 0
    """The newest broker timestamp of the partition's events folded so far (the log's time)."""
    log_changed: bool = False
    """`log_ms` moved since the last `take_log_time`."""
    ends: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    """(end, due) of each ended run's state or marker (with a retention only)."""
    due: list[tuple[int, bytes]] = field(default_factory=list)
    """A min-heap of (due, key); an entry whose due is not its key's in `ends` is stale."""


class HeldStates:
    """The states of some partitions, in memory up to `memory_bytes` (module docstring)."""

    def __init__(self, memory_bytes: int, retention: StateRetention | None = None) -> None:
        if memory_bytes <= 0:
            raise ValueError(f"memory_bytes={memory_bytes}: expected a positive number of bytes")
        self.memory_bytes = memory_bytes
        self.retention = retention
        self._partitions: dict[int, _Partition] = {}
        self._bytes = 0
        self._cold = ColdStates()

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions held, once loaded (`begin_load` ... `end_load`)."""
        return frozenset(p for p, held in self._partitions.items() if not held.loading)

    @property
    def bytes_in_memory(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return sum(
            len(held.memory) + held.on_disk - len(held.copied)
            for held in self._partitions.values()
        )

    def get(self, partition: int, key: bytes) -> bytes | None:
        held = self._partitions[partition]
        value = held.memory.get(key)
        if value is None and held.on_disk and key not in held.absent:
            value = self._cold.read(partition, key)
            if value is None:
                held.absent.add(key)
            else:
                held.copied.add(key)
                self._hold(held, key, value)
        return value

    def find(self, key: bytes) -> bytes | None:
        """A state whatever its partition: memory first, then disk partition by partition.
        Partitions being loaded are not looked at (their states may be older than their
        changelog's: the timers call this while a recovery awaits its next fetch)."""
        loaded = [(p, held) for p, held in self._partitions.items() if not held.loading]
        for _, held in loaded:
            value = held.memory.get(key)
            if value is not None:
                return value
        for partition, _ in loaded:
            value = self.get(partition, key)
            if value is not None:
                return value
        return None

    def put(self, partition: int, key: bytes, value: bytes, ended_ms: int | None = None) -> None:
        """Hold `value` for `key`; `ended_ms`: its run's end, if it has ended (the retention's
        index)."""
        held = self._partitions[partition]
        self._index(held, key, value, ended_ms)
        # Dropped first, so that the key moves to the end: the most recent.
        if self._drop(held, key) is None and (
            # A put not preceded by a get (the fold always gets first): is there a copy?
            held.on_disk and key not in held.absent
            and self._cold.read(partition, key) is not None
        ):
            held.copied.add(key)
        held.absent.discard(key)
        self._hold(held, key, value)

    def _index(self, held: _Partition, key: bytes, value: bytes | None, ended: int | None) -> None:
        """Note when `key`'s new value is due to go (with a retention)."""
        retention = self.retention
        if retention is None:
            return
        marked = None if value is None else marked_end(value)
        end = marked if marked is not None else ended
        if end is None or value is None:
            held.ends.pop(key, None)
            return
        due = retention.due(end, marker=marked is not None)
        if held.ends.get(key) != (end, due):
            held.ends[key] = (end, due)
            heapq.heappush(held.due, (due, key))

    def ended_at(self, partition: int, key: bytes) -> int | None:
        """The end of `key`'s run as held (its state's or its closed marker's); None if it
        has not ended, is not held, or no retention is kept."""
        found = self._partitions[partition].ends.get(key)
        return None if found is None else found[0]

    def advance_log_time(self, partition: int, timestamp_ms: int) -> int:
        """The partition's log time once a record of `timestamp_ms` is read."""
        held = self._partitions[partition]
        if timestamp_ms > held.log_ms:
            held.log_ms, held.log_changed = timestamp_ms, True
        return held.log_ms

    def take_log_times(self) -> dict[int, bytes]:
        """The log time of each partition whose log time moved since the last take, as its
        `LOG_TIME_KEY` value in the changelog."""
        taken = {}
        for partition, held in self._partitions.items():
            if held.log_changed:
                taken[partition] = held.log_ms.to_bytes(8, "big", signed=True)
                held.log_changed = False
        return taken

    def expire(self) -> list[tuple[int, bytes, bytes | None]]:
        """Replace each state due (its run ended more than the retention before the log's time)
        by a closed marker, and delete each marker due (the horizon after that); what changed,
        as (partition, key, new value or None), for the changelog."""
        retention = self.retention
        changed: list[tuple[int, bytes, bytes | None]] = []
        if retention is None:
            return changed
        for partition, held in self._partitions.items():
            if held.loading:
                continue
            gone: list[bytes] = []
            while held.due and held.due[0][0] < held.log_ms:
                due, key = heapq.heappop(held.due)
                found = held.ends.get(key)
                if found is None or found[1] != due:
                    continue  # stale: the key changed since
                value = self.get(partition, key)
                if value is not None and marked_end(value) is None and retention.horizon_ms:
                    marker = closed_marker(found[0])
                    self.put(partition, key, marker)
                    changed.append((partition, key, marker))
                    continue
                del held.ends[key]
                self._forget(held, key)
                gone.append(key)
                changed.append((partition, key, None))
            if gone:
                self._cold.delete_many(partition, gone)
        return changed

    def _forget(self, held: _Partition, key: bytes) -> None:
        """Take `key` out of memory and out of the disk's count (the caller deletes its rows);
        called after a `get`, which brought any copy on disk into memory."""
        self._drop(held, key)
        if key in held.copied:
            held.copied.remove(key)
            held.on_disk -= 1
        held.absent.add(key)

    def _hold(self, held: _Partition, key: bytes, value: bytes) -> None:
        held.memory[key] = value
        self._bytes += _cost(key, value)

    def _drop(self, held: _Partition, key: bytes) -> bytes | None:
        """Take `key` out of memory (the disk is not touched); what it held, if anything."""
        value = held.memory.pop(key, None)
        if value is not None:
            self._bytes -= _cost(key, value)
        return value

    def items(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Every state (partition, key, bytes): memory's, then disk's a page at a time. Do not
        get, find, put or spill while iterating: a state could be missed or come twice."""
        for partition, held in list(self._partitions.items()):
            for key, value in list(held.memory.items()):
                yield partition, key, value
        for partition, held in list(self._partitions.items()):
            for key, value in self._cold.items(partition):
                if key not in held.memory:
                    yield partition, key, value

    def spill(self) -> int:
        """Move the least recently put states to disk if memory holds more than the budget;
        how many moved. StateSpillError if the disk refuses them: those not moved stay in
        memory, over the budget, and the next spill tries again."""
        if self._bytes <= self.memory_bytes:
            return 0
        share = 1 - self.memory_bytes * _SPILL_TO / self._bytes
        return sum(
            # Rounded up: a partition of a few large states still gives one.
            self._spill_oldest(partition, held, math.ceil(len(held.memory) * share))
            for partition, held in self._partitions.items()
        )

    def _spill_oldest(self, partition: int, held: _Partition, count: int) -> int:
        if count <= 0:
            return 0
        oldest = list(itertools.islice(held.memory.items(), count))
        self._cold.put_many(partition, oldest)  # replaces the copies
        for key, _ in oldest:
            self._drop(held, key)
            if key in held.copied:
                held.copied.remove(key)
            else:
                held.on_disk += 1
        held.absent.clear()  # bounded by the batches between two spills, and true until now
        held.spilled_while_loading |= held.loading
        return len(oldest)

    def hold(self, partitions: Collection[int]) -> None:
        """Hold `partitions` afresh, with no states (their previous ones are forgotten)."""
        self.release(partitions)
        for partition in partitions:
            self._partitions[partition] = _Partition()

    def begin_load(self, partitions: Collection[int]) -> None:
        """`hold` `partitions`, then `load` each one's records and `end_load`."""
        self.hold(partitions)
        for partition in partitions:
            self._partitions[partition].loading = True

    def load(self, partition: int, records: Iterable[Loaded]) -> None:
        """Hold a partition's states as its changelog's records say, in log order (a key's
        last record wins, None deletes; `LOG_TIME_KEY`'s is the log time), spilling as memory
        fills."""
        held = self._partitions[partition]
        for record in records:
            key, value = record[0], record[1]
            if key == LOG_TIME_KEY:
                if value is not None:
                    self.advance_log_time(partition, int.from_bytes(value, "big", signed=True))
                    held.log_changed = False  # it is in the changelog already
                continue
            self._index(held, key, value, record[2] if len(record) > 2 else None)
            self._drop(held, key)
            if value is None:
                if held.spilled_while_loading:
                    self._cold.delete_many(partition, [key])
                continue
            self._hold(held, key, value)
            if self._bytes > self.memory_bytes:
                self.spill()

    def end_load(self) -> None:
        for partition, held in self._partitions.items():
            if held.spilled_while_loading:
                # Keys spilled early and written again later are in memory now, untracked:
                # their old copies go (cheaper here, in one statement, than a read per record),
                # and the rows are counted again (a key spilled twice was counted twice).
                self._cold.delete_many(partition, list(held.memory))
                held.copied.clear()
                held.on_disk = self._cold.count(partition)
            held.loading = held.spilled_while_loading = False

    def release(self, partitions: Collection[int]) -> None:
        """Forget the states of `partitions`."""
        for partition in partitions:
            held = self._partitions.pop(partition, None)
            if held is not None:
                self._bytes -= sum(_cost(key, value) for key, value in held.memory.items())
        self._cold.drop(partitions)

    def close(self) -> None:
        """Forget every state and delete the disk's."""
        self._partitions.clear()
        self._bytes = 0
        self._cold.close()
