"""HeldStates: states in memory up to a budget, the rest on disk, every state in one place."""

from __future__ import annotations

import random

import pytest

from steplog.errors import StateSpillError
from steplog.processors.held_states import ENTRY_BYTES, HeldStates

VALUE = b"v" * 200
ENTRY = len(b"run-0000") + len(VALUE) + ENTRY_BYTES


def key(number: int) -> bytes:
    return f"run-{number:04d}".encode()


def filled(count: int, budget_entries: int, partitions: int = 3) -> HeldStates:
    held = HeldStates(memory_bytes=budget_entries * ENTRY)
    held.hold(range(partitions))
    for number in range(count):
        held.put(number % partitions, key(number), VALUE + str(number).encode())
    return held


def test_spill_brings_memory_under_the_budget_and_keeps_every_state() -> None:
    held = filled(1000, budget_entries=100)
    held.spill()
    assert held.bytes_in_memory <= held.memory_bytes
    assert len(held) == 1000
    for number in range(1000):
        assert held.get(number % 3, key(number)) == VALUE + str(number).encode()


def test_the_most_recently_put_states_stay_in_memory() -> None:
    held = filled(1000, budget_entries=100)
    held.spill()
    in_memory = held.bytes_in_memory
    for number in range(990, 1000):  # the newest: reading them moves nothing
        held.get(number % 3, key(number))
    assert held.bytes_in_memory == in_memory
    held.get(0, key(0))  # the oldest comes back from disk
    assert held.bytes_in_memory == in_memory + ENTRY + 1


def test_a_state_read_back_and_put_again_is_not_shadowed_by_its_old_bytes() -> None:
    held = filled(300, budget_entries=30)
    held.spill()
    assert held.get(0, key(0)) is not None  # from disk, whose copy stays (memory wins)
    held.put(0, key(0), b"new")
    held.spill()  # may move it out again: the new bytes, replacing nothing stale
    for _ in range(2):
        assert held.get(0, key(0)) == b"new"
        assert {k: v for _, k, v in held.items()}[key(0)] == b"new"
    assert len(held) == 300


def test_find_reads_a_spilled_state_whatever_its_partition() -> None:
    held = filled(300, budget_entries=30)
    held.spill()
    assert held.find(key(1)) == VALUE + b"1"
    assert held.find(b"nobody") is None
    assert held.get(1, key(1)) == VALUE + b"1"


def test_items_yields_every_state_once() -> None:
    held = filled(500, budget_entries=50)
    held.spill()
    seen = [(partition, k) for partition, k, _ in held.items()]
    assert sorted(seen) == sorted((n % 3, key(n)) for n in range(500))


def test_release_forgets_memory_and_disk() -> None:
    held = filled(600, budget_entries=60)
    held.spill()
    held.release([0])
    assert held.partitions == frozenset({1, 2})
    assert len(held) == 400
    assert held.find(key(0)) is None and held.find(key(3)) is None
    held.hold([0])
    assert held.get(0, key(0)) is None


def test_loading_a_changelog_larger_than_memory_keeps_each_keys_last_record() -> None:
    rng = random.Random(7)
    records: list[tuple[bytes, bytes | None]] = []
    for number in range(5000):
        k = key(rng.randrange(800))
        value = None if rng.random() < 0.05 else VALUE + str(number).encode()
        records.append((k, value))
    expected: dict[bytes, bytes] = {}
    for k, value in records:
        if value is None:
            expected.pop(k, None)
        else:
            expected[k] = value
    held = HeldStates(memory_bytes=50 * ENTRY)
    held.begin_load([4])
    for start in range(0, len(records), 700):  # as the changelog's fetches come
        held.load(4, records[start:start + 700])
    held.end_load()
    assert len(held) == len(expected)
    assert {k: v for _, k, v in held.items()} == expected
    assert all(held.get(4, k) == v for k, v in expected.items())


def test_random_operations_agree_with_a_plain_dict() -> None:
    rng = random.Random(11)
    held = HeldStates(memory_bytes=40 * ENTRY)
    held.hold([0, 1])
    reference: dict[tuple[int, bytes], bytes] = {}
    for step in range(20_000):
        partition, k = rng.randrange(2), key(rng.randrange(400))
        if rng.random() < 0.5:
            value = VALUE + str(step).encode()
            held.put(partition, k, value)
            reference[partition, k] = value
        else:
            assert held.get(partition, k) == reference.get((partition, k))
        if step % 97 == 0:
            held.spill()
            assert held.bytes_in_memory <= held.memory_bytes
    assert len(held) == len(reference)
    assert {(p, k): v for p, k, v in held.items()} == reference


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_bytes=0"):
        HeldStates(memory_bytes=0)


def test_a_partition_being_loaded_is_not_found_nor_counted_as_held() -> None:
    held = HeldStates(memory_bytes=50 * ENTRY)
    held.begin_load([0])
    held.load(0, [(b"run", b"old")])  # its newer record is in the next fetch
    assert held.partitions == frozenset()
    assert held.find(b"run") is None
    held.load(0, [(b"run", b"new")])
    held.end_load()
    assert held.partitions == frozenset({0})
    assert held.find(b"run") == b"new"


def test_spill_gets_under_budget_with_one_large_state_per_partition() -> None:
    held = HeldStates(memory_bytes=4000)
    held.hold(range(8))
    for partition in range(8):
        held.put(partition, key(partition), b"x" * 400)
    assert held.spill() > 0
    assert held.bytes_in_memory <= 4000
    assert len(held) == 8


def test_an_empty_key_is_kept_on_disk_like_any_other() -> None:
    held = HeldStates(memory_bytes=ENTRY)
    held.hold([0])
    held.put(0, b"", VALUE)
    held.put(0, key(1), VALUE)
    held.spill()
    assert sorted(k for _, k, _ in held.items()) == [b"", key(1)]
    assert held.get(0, b"") == VALUE


def test_a_disk_that_refuses_states_leaves_them_all_in_memory() -> None:
    held = filled(300, budget_entries=30)
    held.spill()  # the disk works: some are on it
    # A full disk, as SQLite says it (SQLITE_FULL), after a few more pages: some rows of the
    # next spill are written, then it fails (without a journal, nothing is rolled back).
    db = held._cold._connection()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages + 2}")
    for number in range(300, 600):
        held.put(number % 3, key(number), VALUE + str(number).encode())
    with pytest.raises(StateSpillError, match="database or disk is full.*TMPDIR"):
        held.spill()
    assert held.bytes_in_memory > held.memory_bytes  # over budget rather than lossy
    assert len(held) == 600
    assert all(held.get(n % 3, key(n)) == VALUE + str(n).encode() for n in range(600))
    db.execute(f"PRAGMA max_page_count = {2**30}")  # space again: the next spill goes through
    assert held.spill() > 0
    assert len(held) == 600
    assert {k: v for _, k, v in held.items()} == {
        key(n): VALUE + str(n).encode() for n in range(600)
    }
