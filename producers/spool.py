"""The SDK's disk spool: where the sender's buffer puts its oldest events instead of dropping
them when Kafka is away for longer than the memory buffer holds (Client(spool_dir=...)).

Order. Everything in the spool is older than everything in the memory buffer: the buffer
spills its oldest events here, and the delivery loop takes from the spool before the buffer
(producers.send_buffer). Within the spool, segment files are read in the order of their
numbers and frames in file order. The one chunk that can be older than the spool is a chunk
the delivery loop took from the buffer when the spool was empty and still holds when the
buffer spills behind it; if it fails, or the sender closes with it, it is `prepend`ed: written
to a segment numbered before the first (fresh spools start at 2**40, so there is room below).

Consumption. A chunk `read` from the spool stays on disk until the delivery loop has it
acknowledged or refused whole; then `commit` deletes the segments read to their end (but the
one the writer appends to: at close) and writes the delivered position in the first one to
`cursor` (a temporary file renamed over it). A process that dies between an acknowledgement
and the commit re-sends that chunk when it starts again (a duplicate the fold drops by
event_id); the spool never re-sends otherwise.

Writing. `append` (on the caller's thread, under the send buffer's lock) only queues events
in memory; the spool's writer thread writes them to the OS, and every file operation happens
outside the spool's lock, so `send()` never waits for a disk: a write() can stall for hundreds
of milliseconds while the kernel flushes dirty pages (measured: 400 ms on these machines when
written from the caller's thread). A disk slower than the events leaves at most
`_QUEUED_MAX_BYTES` queued; past it the oldest queued are dropped and said. The delivery
thread reads only what is written: it waits for the writer when all that is left is queued.

Durability (the fsync policy). Queued events reach the OS within moments, without fsync: a
process that is killed loses at most those moments' events (a crash of the process loses its
memory buffer anyway), and the page cache keeps the rest. The delivery thread fsyncs what was
written since the last time after each failed delivery attempt (every few seconds while Kafka
is away: the retry backoff) and at close, so a machine crash or power cut loses at most those
last seconds; the torn tail it may leave is found by the frames' lengths and CRCs
(producers.spool_frames) and cut when the spool is opened again.

Bound. The segment files hold at most `max_bytes` (give or take the segment being written);
past it the oldest segment is deleted and its events counted in `dropped` (the sender adds
them to its own). A spool dir belongs to one
process at a time: `lock` (flock, released by the OS however the process ends) says which.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from steplog.errors import SpoolError
from steplog.settings import Settings

from .record_batches import Message
from .spool_files import read_cursor, scan_segment, sync_dir, take_lock, write_cursor, write_new
from .spool_frames import SEGMENT_MAGIC, frame, frame_bytes, parse_frames

__all__ = ["MIN_SPOOL_BYTES", "Spool", "open_spool"]

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name

MIN_SPOOL_BYTES: Final = 1024 * 1024
# A fresh spool numbers its segments from here, upwards as it appends and downwards when a
# chunk older than the whole spool is prepended.
_FIRST_NUMBER: Final = 1 << 40
# Segments are the unit of deletion, past the bound and once read: a sixteenth of the bound,
# so that dropping one drops little, within sizes that keep the file count and a read small.
_MIN_SEGMENT_BYTES: Final = 64 * 1024
_MAX_SEGMENT_BYTES: Final = 16 * 1024 * 1024
_READ_WINDOW_BYTES: Final = 1024 * 1024
_QUEUED_MAX_BYTES: Final = 32 * 1024 * 1024
_CLOSE_WAIT_S: Final = 10.0
_SUFFIX: Final = ".seg"
_START: Final = len(SEGMENT_MAGIC)


@dataclass(eq=False)
class _Segment:
    number: int
    path: Path
    size: int
    """Bytes in the file (its consumed prefix included: it is deleted whole)."""
    unread: int
    """Frames after `read_at`."""
    read_at: int
    """Offset of the next frame to read."""
    committed_at: int
    """Offset of the first frame not delivered yet (the cursor's, when this is the first)."""
    deleted: bool = False


class Spool:
    """The segment files in `directory`, at most `max_bytes` of them, and the writer thread
    that fills them; thread-safe. The lock guards counters and the segments' list only: no
    file operation runs under it (module doc)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < MIN_SPOOL_BYTES:
            raise SpoolError(
                f"spool_max_bytes is {max_bytes}; expected at least {MIN_SPOOL_BYTES} (1 MiB)"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"the spool dir {directory} cannot be created: {exc}") from exc
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(_MAX_SEGMENT_BYTES, max(_MIN_SEGMENT_BYTES, max_bytes // 16))
        self.dropped = 0
        """Events deleted unsent: past the bound, unwritable or unreadable."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._cursor_lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._bytes = 0
        self._disk_unread = 0
        self._read_uncommitted = 0
        self._queued: deque[Message] = deque()
        self._queued_bytes = 0
        self._writing = 0
        self._closing = False
        self._unsynced: set[Path] = set()
        self._complained: str | None = None
        # The writer thread's own: the segment it appends to (never an earlier run's).
        self._current: _Segment | None = None
        self._current_fd: int | None = None
        self._lock_fd = take_lock(directory)
        try:
            cursor_number = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        # Above the cursor's too: a crash may have deleted its segment and left it, and a new
        # segment numbered below it would be taken for delivered at the next start.
        last = self._segments[-1].number if self._segments else 0
        self._next_number = max(_FIRST_NUMBER, last + 1, cursor_number + 1)
        self._writer = threading.Thread(
            target=self._write_queued, name=f"steplog-spool {directory}", daemon=True
        )
        self._writer.start()

    @property
    def unread(self) -> int:
        """Events in the spool not read yet (written or queued)."""
        return self._disk_unread + len(self._queued) + self._writing

    @property
    def size(self) -> int:
        """Bytes of the segment files."""
        return self._bytes

    # ------------------------------------------------------------- the buffer's side

    def append(self, messages: list[Message]) -> None:
        """Queue events after the others for the writer; never blocks on the disk, never
        raises (a full disk or one slower than the events: counted dropped, said once)."""
        with self._lock:
            for key, value in messages:
                self._queued.append((key, value))
                self._queued_bytes += len(key) + len(value)
            while self._queued_bytes > _QUEUED_MAX_BYTES:
                old_key, old_value = self._queued.popleft()
                self._queued_bytes -= len(old_key) + len(old_value)
                self.dropped += 1
                self._complain("the disk does not keep up with the events")
            self._changed.notify_all()

    def prepend(self, messages: list[Message]) -> None:
        """Write events before all others (a chunk older than the spool, module doc), synced,
        and point the cursor at them. The delivery thread's."""
        if not messages:
            return
        with self._lock:
            number = self._segments[0].number - 1 if self._segments else self._take_number()
        # Meanwhile segments may be deleted or rolled, never numbered lower (only the delivery
        # thread prepends), so the number stays below the first one's.
        path = self._path(number)
        data = SEGMENT_MAGIC + b"".join(frame(key, value) for key, value in messages)
        try:
            write_new(path, data)
        except OSError as exc:
            with self._lock:
                self.dropped += len(messages)
                self._complain(str(exc))
            return
        with self._lock:
            self._segments.appendleft(
                _Segment(number, path, len(data), len(messages), _START, _START)
            )
            self._bytes += len(data)
            self._disk_unread += len(messages)
        self._save_cursor()

    # ---------------------------------------------------------- the delivery side

    def read(self, count: int) -> list[Message]:
        """The next `count` events at most, oldest first; they stay on disk until `commit`.
        Waits for the writer when what is left is only queued. The delivery thread's."""
        chunk: list[Message] = []
        while len(chunk) < count:
            with self._lock:
                while not chunk and not self._disk_unread and self._waiting_for_writer():
                    self._changed.wait(1.0)
                segment = next((s for s in self._segments if s.unread), None)
                if segment is None:
                    break
                read_at, end = segment.read_at, segment.size
            read = self._read_from(segment, read_at, end, count - len(chunk))
            with self._lock:
                if segment.deleted or segment.read_at != read_at:
                    continue  # dropped past the bound meanwhile (and counted)
                if not read:
                    self._unreadable(segment)
                    continue
                segment.read_at += sum(frame_size for frame_size, _ in read)
                segment.unread -= len(read)
                self._disk_unread -= len(read)
                self._read_uncommitted += len(read)
            chunk.extend(message for _, message in read)
        return chunk

    def commit(self) -> None:
        """Every event read so far is delivered: delete the segments read to their end (but
        the one being appended to), and keep the read position for the next start."""
        done: list[Path] = []
        with self._lock:
            for segment in self._segments:
                segment.committed_at = segment.read_at
            while (self._segments and not self._segments[0].unread
                   and self._segments[0] is not self._current):
                done.append(self._remove_first().path)
            self._read_uncommitted = 0
        for path in done:
            path.unlink(missing_ok=True)
        self._save_cursor()

    def sync(self) -> None:
        """fsync what was written since the last call (the delivery thread's, module doc)."""
        with self._lock:
            paths, self._unsynced = self._unsynced, set()
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # read and deleted meanwhile
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if paths:
            sync_dir(self.directory)  # the new segments' names

    def close(self) -> None:
        """Write what is queued, sync, and release the dir (its lock); what is left is sent by
        the next process. Closing again does nothing."""
        if self._lock_fd < 0:
            return
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._writer.join(_CLOSE_WAIT_S)
        if not self._writer.is_alive():
            with self._lock:
                self._current = None  # no more appends: a segment read to its end can go
            if not self._read_uncommitted:
                self.commit()
        self.sync()
        os.close(self._lock_fd)
        self._lock_fd = -1
        kept = self.unread + self._read_uncommitted
        if kept:
            log.warning(
                "%d events (%d bytes) are kept in the spool at %s; the next sender with this "
                "spool dir sends them first", kept, self._bytes, self.directory,
            )

    # ------------------------------------------------------------- the writer thread

    def _write_queued(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._closing:
                    self._changed.wait()
                if not self._queued:
                    break
                batch = list(self._queued)
                self._queued.clear()
                self._queued_bytes = 0
                self._writing = len(batch)
            try:
                self._write_batch(batch)
            except Exception as exc:  # a bug must not stop the spool (nor hang the reader)
                log.exception("the spool's writer failed")
                with self._lock:
                    self.dropped += self._writing
                    self._complain(repr(exc))
            with self._lock:
                self._writing = 0
                self._changed.notify_all()
        if self._current_fd is not None:
            os.close(self._current_fd)

    def _write_batch(self, batch: list[Message]) -> None:
        """Append `batch` to segments, one write per segment, making room past the bound."""
        at = 0
        while at < len(batch):
            segment = self._segment_to_write()
            if segment is None or self._current_fd is None:
                with self._lock:
                    self.dropped += len(batch) - at
                    self._writing = 0
                return
            frames: list[bytes] = []
            size, room = 0, self.segment_bytes - segment.size
            while at < len(batch) and (not frames or size < room):
                frames.append(frame(*batch[at]))
                size += len(frames[-1])
                at += 1
            self._make_room(size)
            try:
                data = b"".join(frames)
                written = os.write(self._current_fd, data)
                if written != len(data):
                    raise OSError(f"wrote {written} of {len(data)} bytes")
            except OSError as exc:
                self._abandon_current(str(exc), len(frames))
                continue
            with self._lock:
                segment.size += size
                segment.unread += len(frames)
                self._bytes += size
                self._disk_unread += len(frames)
                self._writing -= len(frames)
                self._unsynced.add(segment.path)
                self._complained = None
                self._changed.notify_all()

    def _segment_to_write(self) -> _Segment | None:
        current = self._current
        if current is not None and not current.deleted and current.size < self.segment_bytes:
            return current
        if self._current_fd is not None:
            os.close(self._current_fd)
            self._current_fd = None
        with self._lock:
            number = self._take_number()
        path = self._path(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            os.write(fd, SEGMENT_MAGIC)
        except OSError as exc:
            with self._lock:
                self._complain(str(exc))
            return None
        segment = _Segment(number, path, _START, 0, _START, _START)
        with self._lock:
            self._segments.append(segment)
            self._bytes += _START
            self._current, self._current_fd = segment, fd
        return segment

    def _make_room(self, size: int) -> None:
        """Past the bound: delete the oldest segments (not the one being written)."""
        doomed: list[_Segment] = []
        with self._lock:
            while (self._bytes + size > self.max_bytes and self._segments
                   and self._segments[0] is not self._current):
                segment = self._remove_first()
                self.dropped += segment.unread
                self._disk_unread -= segment.unread
                doomed.append(segment)
        for segment in doomed:
            segment.path.unlink(missing_ok=True)
        if doomed:
            self._save_cursor()

    def _abandon_current(self, reason: str, lost: int) -> None:
        """A write failed: cut what it wrote of the segment, stop appending to it."""
        current = self._current
        assert current is not None and self._current_fd is not None
        try:
            os.ftruncate(self._current_fd, current.size)
        except OSError:
            pass  # a later open cuts the torn frame
        with self._lock:
            self._current = None  # the next batch rolls (and closes its file)
            self.dropped += lost
            self._writing -= lost
            self._complain(reason)

    # ----------------------------------------------------------------- internals

    def _waiting_for_writer(self) -> bool:
        """Holding the lock: events are queued or being written, and the writer runs."""
        return bool(self._queued or self._writing) and self._writer.is_alive()

    def _read_from(
        self, segment: _Segment, read_at: int, end: int, limit: int
    ) -> list[tuple[int, Message]]:
        """Up to `limit` frames of `segment` from `read_at` (outside the lock), with sizes."""
        window = min(_READ_WINDOW_BYTES, end - read_at)
        while True:
            try:
                with open(segment.path, "rb") as file:
                    file.seek(read_at)
                    data = file.read(window)
            except FileNotFoundError:  # deleted past the bound meanwhile
                return []
            parsed = parse_frames(data, 0, limit)
            if parsed.messages or not parsed.needed or window >= end - read_at:
                break
            window = min(parsed.needed, end - read_at)  # one frame larger than the window
        sizes = [frame_bytes(key, value) for key, value in parsed.messages]
        return list(zip(sizes, parsed.messages, strict=True))

    def _unreadable(self, segment: _Segment) -> None:
        """Holding the lock: the file changed under the spool (only whole frames of its own
        are read): what is left of it cannot be trusted."""
        log.warning("the spool segment %s is unreadable from byte %d: its %d events left are "
                    "dropped", segment.path, segment.read_at, segment.unread)
        self.dropped += segment.unread
        self._disk_unread -= segment.unread
        segment.unread, segment.read_at = 0, segment.size

    def _remove_first(self) -> _Segment:
        segment = self._segments.popleft()
        segment.deleted = True
        self._bytes -= segment.size
        return segment

    def _complain(self, reason: str) -> None:
        """Holding the lock: said once per run of failures, not per event."""
        if self._complained is None:
            log.warning("the spool at %s cannot keep events (%s): they are dropped until it "
                        "can (counted in stats().dropped)", self.directory, reason)
        self._complained = reason

    def _take_number(self) -> int:
        number = self._next_number
        self._next_number += 1
        return number

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:016x}{_SUFFIX}"

    def _save_cursor(self) -> None:
        """The read position in the first segment, for the next start (none: no cursor)."""
        with self._cursor_lock:  # one writer at a time, each with the latest position
            with self._lock:
                first = self._segments[0] if self._segments else None
                position = (first.number, first.committed_at) if first else None
            try:
                write_cursor(self.directory / "cursor", position)
            except OSError as exc:
                with self._lock:
                    self._complain(str(exc))

    def _recover(self) -> int:
        """Take over an earlier run's segments: skip what its cursor says was delivered, cut
        torn tails, and count what is left. Returns the cursor's segment number."""
        cursor_number, cursor_at = read_cursor(self.directory / "cursor")
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                number = int(path.stem, 16)
            except ValueError:
                log.warning("ignoring %s in the spool dir: not a segment name", path)
                continue
            if number < cursor_number:  # delivered; its deletion was cut short
                path.unlink(missing_ok=True)
                continue
            start = cursor_at if number == cursor_number else _START
            scan = scan_segment(path, start)
            if scan is None:
                continue
            if not scan.events:
                path.unlink(missing_ok=True)
                continue
            read_at = min(max(start, _START), scan.end)
            self._segments.append(
                _Segment(number, path, scan.end, scan.events, read_at, read_at)
            )
            self._bytes += scan.end
            self._disk_unread += scan.events
        if self._disk_unread:
            log.warning("the spool at %s holds %d events (%d bytes) from an earlier run: they "
                        "are sent first", self.directory, self._disk_unread, self._bytes)
        return cursor_number


def open_spool(
    spool_dir: str | Path | None, max_bytes: int | None, settings: Settings | None
) -> Spool | None:
    """The spool a Client asks for: its arguments, else STEPLOG_SPOOL_DIR and
    STEPLOG_SPOOL_MAX_BYTES when it read its settings; None (no spool) without a dir."""
    if spool_dir is None and settings is not None:
        spool_dir = settings.spool_dir
    if spool_dir is None:
        return None
    if max_bytes is None:
        max_bytes = (settings or Settings.model_construct()).spool_max_bytes
    return Spool(Path(spool_dir), max_bytes)
