"""The spool dir's files other than the frames' format (producers.spool_frames): the lock that
keeps a second process off it, the cursor, a segment written whole, and the scan that takes
over an earlier run's segment."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from steplog.errors import SpoolError, SpoolLockedError

from .spool_frames import SEGMENT_MAGIC, parse_frames

__all__ = ["SegmentScan", "read_cursor", "scan_segment",
           "sync_dir", "take_lock", "write_cursor", "write_new"]

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name


def take_lock(directory: Path) -> int:
    """Lock `directory` for this process (flock: released by the OS however the process
    ends; a second open file, even in this process, is refused); returns the lock's fd."""
    path = directory / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(f"the spool dir {directory} cannot be used: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolLockedError(
            f"the spool dir {directory} is in use by another process (pid {holder}, in "
            f"{path}); each process needs a spool dir of its own "
            "(STEPLOG_SPOOL_DIR or Client(spool_dir=...))"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def read_cursor(path: Path) -> tuple[int, int]:
    """(segment number, offset); (0, 0) when there is none or it cannot be read."""
    try:
        number, offset = path.read_text().split()
        return int(number, 16), int(offset)
    except (OSError, ValueError):
        return 0, 0


def write_cursor(path: Path, position: tuple[int, int] | None) -> None:
    """Replace the cursor (a temporary file renamed over it), or remove it (None). Not
    synced: a cursor lost to a machine crash only makes the next start re-send."""
    if position is None:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{position[0]:016x} {position[1]}\n")
    os.replace(temporary, path)


def write_new(path: Path, data: bytes) -> None:
    """A new file holding `data`, synced, its name too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SegmentScan:
    events: int
    """Whole frames from the start offset on."""
    end: int
    """Offset after the last of them (the file is cut there)."""


def scan_segment(path: Path, start: int) -> SegmentScan | None:
    """Count an earlier run's frames in `path` from `start`, cutting a torn or spoiled tail
    (a crash's, producers.spool_frames); None for a file that is not a segment."""
    data = path.read_bytes()
    if not data.startswith(SEGMENT_MAGIC):
        log.warning("ignoring %s in the spool dir: not a spool segment", path)
        return None
    parsed = parse_frames(data, min(max(start, len(SEGMENT_MAGIC)), len(data)))
    if parsed.problem is not None:
        log.warning("the spool segment %s ends in a frame a crash cut short or spoiled (%s): "
                    "%d bytes cut", path, parsed.problem, len(data) - parsed.end)
        os.truncate(path, parsed.end)
    return SegmentScan(len(parsed.messages), parsed.end)
