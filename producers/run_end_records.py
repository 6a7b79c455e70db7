"""Run ends in the events topic's records: recognising them cheaply, decoding them, and
remembering the recent ones of a partition (`PartitionEnds`), for the tail of
producers/run_end_tail.py."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from steplog.errors import InvalidEventError
from steplog.projections.queries import RUN_END_TYPES, RunEnd
from steplog.schemas.codec import decode_event
from steplog.schemas.events import RunCancelled, RunCompleted, RunFailed

__all__ = ["PartitionEnds", "decode_run_end", "is_run_end"]

_END_TAGS: Final = tuple(f'"{t}"'.encode() for t in RUN_END_TYPES)
_RUN_EVENT_TAG: Final = b'"run.'
_RECENT_ENDS: Final = 1024
_RECENT_VALUE_BYTES: Final = 16 * 1024


def is_run_end(value: bytes) -> bool:
    """Whether an encoded event may be a run's end (cheap; decoding decides)."""
    return _RUN_EVENT_TAG in value and any(tag in value for tag in _END_TAGS)


def decode_run_end(value: bytes, *, max_bytes: int) -> RunEnd | None:
    """The run end encoded in `value`, or None when it is none (or not a valid event)."""
    try:
        event = decode_event(value, max_bytes=max(max_bytes, len(value)))
    except InvalidEventError:
        return None  # the processors dead-letter it; it ends nothing
    if isinstance(event, RunCompleted | RunFailed | RunCancelled):
        return RunEnd.from_event(event)
    return None


@dataclass
class PartitionEnds:
    """The run ends read from one partition since `covered_from`: every end event at an offset
    in [covered_from, what was read) is here, the newest `limit` of them (forgetting one moves
    `covered_from` past it). Values over `max_value_bytes` are not kept: the offset says where
    to read it again."""

    covered_from: int
    limit: int = _RECENT_ENDS
    max_value_bytes: int = _RECENT_VALUE_BYTES
    _order: deque[tuple[int, bytes]] = field(default_factory=deque)
    _by_key: dict[bytes, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    _last: int = -1

    def covers(self, offset: int) -> bool:
        """Whether every end at or past `offset` read so far is here."""
        return offset >= self.covered_from

    def add(self, offset: int, key: bytes, value: bytes) -> None:
        if offset <= self._last or offset < self.covered_from:
            return  # read again after a seek back: already here
        self._last = offset
        kept = value if len(value) <= self.max_value_bytes else None
        self._by_key.setdefault(key, []).append((offset, kept))
        self._order.append((offset, key))
        while len(self._order) > self.limit:
            oldest, oldest_key = self._order.popleft()
            ends = self._by_key[oldest_key]
            ends.pop(0)
            if not ends:
                del self._by_key[oldest_key]
            self.covered_from = oldest + 1

    def find(self, key: bytes, start: int) -> list[tuple[int, bytes | None]]:
        """The ends of run `key` at or past `start`, oldest first (offset, value or None)."""
        return [(offset, value) for offset, value in self._by_key.get(key, ()) if offset >= start]
