"""States by partition and key as changelog bytes: the most recently put in memory, up to a
budget, the others in `cold_states.ColdStates` on disk.

Every run ever seen keeps its state (a late or duplicated event must fold onto what the run
was, or the rows would regress), so without a bound the processors' memory grows with every
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

The budget counts the states' bytes; the process's RSS grows about twice as fast while states
accumulate (the allocator's own overhead and fragmentation: 80,000 benchmark runs of 1.1 KB
each, 95 MiB of states, took 190 MiB more RSS), and the disk's page cache adds 16 MiB.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from .cold_states import ColdStates

__all__ = ["HeldStates"]

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


class HeldStates:
    """The states of some partitions, in memory up to `memory_bytes` (module docstring)."""

    def __init__(self, memory_bytes: int) -> None:
        if memory_bytes <= 0:
            raise ValueError(f"memory_bytes={memory_bytes}: expected a positive number of bytes")
        self.memory_bytes = memory_bytes
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

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        held = self._partitions[partition]
        # Dropped first, so that the key moves to the end: the most recent.
        if self._drop(held, key) is None and (
            # A put not preceded by a get (the fold always gets first): is there a copy?
            held.on_disk and key not in held.absent
            and self._cold.read(partition, key) is not None
        ):
            held.copied.add(key)
        held.absent.discard(key)
        self._hold(held, key, value)

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

    def load(self, partition: int, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Hold a partition's states as its changelog's records say, in log order (a key's
        last record wins, None deletes), spilling as memory fills."""
        held = self._partitions[partition]
        for key, value in records:
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
