"""The SDK's disk spool (producers.spool, producers.spool_frames) and the send buffer over it:
framing that finds a torn or spoiled tail, the bound, the cursor across a restart, the lock,
and the order the buffer takes events in. Real files in a temporary dir; no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplog.producers.client import Client
from steplog.producers.record_batches import Message
from steplog.producers.send_buffer import SendBuffer
from steplog.errors import SpoolLockedError
from steplog.producers.spool import MIN_SPOOL_BYTES, Spool
from steplog.producers.spool_frames import SEGMENT_MAGIC, frame, parse_frames
from steplog.settings import load_settings


def events(first: int, count: int, size: int = 20) -> list[Message]:
    return [(b"run-%d" % (n % 7), b"%0*d" % (size, n)) for n in range(first, first + count)]


def numbers(messages: list[Message]) -> list[int]:
    return [int(value) for _, value in messages]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_frames_round_trip_and_a_torn_or_spoiled_tail_stops_the_parse_where_it_starts() -> None:
    data = b"".join(frame(key, value) for key, value in events(0, 3))
    assert numbers(parse_frames(data).messages) == [0, 1, 2]
    last = len(data) - len(frame(*events(2, 1)[0]))
    torn_body = parse_frames(data[:-5])
    assert (numbers(torn_body.messages), torn_body.end) == ([0, 1], last)
    assert torn_body.problem is not None and torn_body.problem.startswith("torn")
    torn_header = parse_frames(data[: last + 7])
    assert torn_header.end == last and "header" in (torn_header.problem or "")
    spoiled = bytearray(data)
    spoiled[-1] ^= 0xFF
    crc = parse_frames(bytes(spoiled))
    assert numbers(crc.messages) == [0, 1]
    assert crc.problem == f"corrupt: CRC mismatch in the frame at byte {last}"
    zeros = parse_frames(data + bytes(64))  # a crashed machine's unwritten blocks
    assert numbers(zeros.messages) == [0, 1, 2] and "CRC" in (zeros.problem or "")


@pytest.mark.parametrize("damage", ["torn", "crc"])
def test_a_damaged_tail_is_cut_when_the_spool_is_opened_again(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path, MIN_SPOOL_BYTES)
    spool.append(events(0, 10))
    spool.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    if damage == "torn":
        del data[-3:]
    else:
        data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path, MIN_SPOOL_BYTES)
    assert again.unread == 9
    assert numbers(again.read(100)) == list(range(9))
    assert segment.stat().st_size == len(SEGMENT_MAGIC) + 9 * len(frame(*events(0, 1)[0]))
    again.close()


def test_a_restart_resumes_after_what_was_committed_and_rereads_what_was_not(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, MIN_SPOOL_BYTES)
    spool.append(events(0, 10))
    assert numbers(spool.read(4)) == [0, 1, 2, 3]
    spool.commit()
    assert numbers(spool.read(3)) == [4, 5, 6]  # read, never acknowledged: sent again
    spool.close()
    again = Spool(tmp_path, MIN_SPOOL_BYTES)
    assert numbers(again.read(100)) == list(range(4, 10))
    again.commit()
    assert (again.unread, segments(tmp_path)) == (0, [])
    again.close()


def test_past_its_bound_the_spool_drops_its_oldest_segments_and_counts_them(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, MIN_SPOOL_BYTES)
    total = 3200  # about 3 MiB of frames
    for first in range(0, total, 100):
        spool.append(events(first, 100, size=960))
    spool.close()  # once the writer has written everything
    assert spool.size <= MIN_SPOOL_BYTES and spool.dropped > 0
    assert spool.dropped + spool.unread == total
    again = Spool(tmp_path, MIN_SPOOL_BYTES)
    assert numbers(again.read(total)) == list(range(spool.dropped, total))  # the newest, in order
    again.close()


def test_a_spool_dir_belongs_to_one_process_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path, MIN_SPOOL_BYTES)
    with pytest.raises(SpoolLockedError, match=f"{tmp_path} is in use by another process"):
        Spool(tmp_path, MIN_SPOOL_BYTES)
    spool.close()
    Spool(tmp_path, MIN_SPOOL_BYTES).close()  # released by close (and by the OS at exit)


def test_a_second_client_on_a_spool_dir_in_use_fails_at_once_naming_it(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", spool_dir=tmp_path / "spool")
    first = Client(settings=settings)  # STEPLOG_SPOOL_DIR, through the settings
    with pytest.raises(SpoolLockedError, match=str(tmp_path / "spool")):
        Client(project="p", bootstrap="127.0.0.1:1", topic="t", spool_dir=tmp_path / "spool")
    first.close()
    assert (tmp_path / "spool" / "lock").exists() and not list(tmp_path.glob("spool/*.seg"))


def test_the_buffer_spills_its_oldest_and_takes_from_the_spool_first(tmp_path: Path) -> None:
    # 25 bytes an event: the buffer holds 10.
    buffer = SendBuffer("events", max_bytes=10 * 25, spool=Spool(tmp_path, MIN_SPOOL_BYTES))
    for key, value in events(0, 5):
        buffer.append(key, value)
    in_flight = buffer.take(3)  # the spool is empty: from memory
    assert numbers(in_flight.messages) == [0, 1, 2] and not in_flight.from_spool
    for key, value in events(5, 20):
        buffer.append(key, value)  # 3..14 spill, behind the chunk in flight
    stats = buffer.stats()
    assert (stats.spooled, stats.buffered, stats.dropped) == (12, 10, 0)
    # The chunk in flight stays with its partitions' lanes (they retry it in order); the
    # spool goes before what is in memory.
    taken = buffer.take(100)
    assert numbers(taken.messages) == list(range(3, 15)) and taken.from_spool
    buffer.acknowledged(len(taken.messages), spooled=len(taken.messages))
    assert numbers(buffer.take(100).messages) == list(range(15, 25))
    assert buffer.counts().undelivered == 3 + 10
    buffer.acknowledged(13)
    assert buffer.wait_drained(timeout=0)


def test_closing_keeps_what_is_undelivered_in_the_spool_in_its_order(tmp_path: Path) -> None:
    buffer = SendBuffer("events", max_bytes=10 * 25, spool=Spool(tmp_path, MIN_SPOOL_BYTES))
    for key, value in events(0, 3):
        buffer.append(key, value)
    in_flight = buffer.take(3).messages
    for key, value in events(3, 15):
        buffer.append(key, value)
    buffer.close()
    assert buffer.drop_undelivered(in_flight) == 0
    buffer.close_spool()
    again = Spool(tmp_path, MIN_SPOOL_BYTES)
    assert numbers(again.read(100)) == list(range(18))
    again.close()
