"""The spool's file format: segment files of length+CRC frames, so that a torn tail is found
and cut, never mis-parsed.

A segment is `SEGMENT_MAGIC` followed by frames. A frame is a 12-byte header (CRC-32 of the
two lengths, the key and the value; the key's length; the value's length; little-endian u32
each), then the key and the value: the (key, value) of one encoded event, as the sender's
buffer holds it. A process killed mid-write leaves a frame cut short (its header, or fewer
bytes than its lengths say); a machine that crashes before the page cache reached the disk may
leave zeros or stale bytes past the last synced frame. Both fail the length or the CRC check,
and the segment ends at the last good frame: `parse_frames` says why it stopped and where.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from .record_batches import Message

__all__ = ["FRAME_HEADER_BYTES", "SEGMENT_MAGIC", "ParsedFrames", "frame", "frame_bytes",
           "parse_frames"]

SEGMENT_MAGIC: Final = b"STEPLOG-SPOOL-1\n"
_HEADER: Final = struct.Struct("<III")
_LENGTHS: Final = struct.Struct("<II")
FRAME_HEADER_BYTES: Final = _HEADER.size
# No event is this large (STEPLOG_MAX_EVENT_BYTES is at most 64 MiB): lengths beyond it are
# garbage, refused before anything is allocated for them.
_MAX_PART_BYTES: Final = 128 * 1024 * 1024


def frame_bytes(key: bytes, value: bytes) -> int:
    """What one event takes in a segment."""
    return FRAME_HEADER_BYTES + len(key) + len(value)


def frame(key: bytes, value: bytes) -> bytes:
    lengths = _LENGTHS.pack(len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(lengths)))
    return b"".join((crc.to_bytes(4, "little"), lengths, key, value))


@dataclass(frozen=True)
class ParsedFrames:
    messages: list[Message]
    end: int
    """Offset (in the data parsed) right after the last good frame."""
    problem: str | None
    """Why parsing stopped before the data's end: a frame cut short ('torn: ...'; at a read
    window's edge that only means 'read on'), or one that is not a frame ('corrupt: ...')."""
    needed: int = 0
    """For a frame cut short: the bytes it needs from `end` on (0 when even its header is)."""


def parse_frames(data: bytes, start: int = 0, limit: int | None = None) -> ParsedFrames:
    """The frames in `data[start:]`, at most `limit` of them, up to the first that is cut
    short or corrupt."""
    messages: list[Message] = []
    at = start
    size = len(data)
    while at < size and (limit is None or len(messages) < limit):
        if size - at < FRAME_HEADER_BYTES:
            return ParsedFrames(messages, at, f"torn: a frame header cut short at byte {at}")
        crc, key_len, value_len = _HEADER.unpack_from(data, at)
        if key_len > _MAX_PART_BYTES or value_len > _MAX_PART_BYTES:
            return ParsedFrames(
                messages, at, f"corrupt: impossible lengths {key_len}/{value_len} at byte {at}"
            )
        body = at + FRAME_HEADER_BYTES
        end = body + key_len + value_len
        if end > size:
            return ParsedFrames(
                messages, at, f"torn: a frame of {end - at} bytes cut short at byte {at}",
                end - at,
            )
        key = data[body : body + key_len]
        value = data[body + key_len : end]
        if zlib.crc32(value, zlib.crc32(key, zlib.crc32(data[at + 4 : body]))) != crc:
            return ParsedFrames(messages, at, f"corrupt: CRC mismatch in the frame at byte {at}")
        messages.append((key, value))
        at = end
    return ParsedFrames(messages, at, None)
