"""Who uses the embedded engine's files: the stack, or a command. One at a time, and a command
never takes them from a stack that is starting.

chDB lets one process own a path (projections/clickhouse.py locks it when it opens it). That
lock is taken late: `steplog dev` starts the broker, then the processors, whose store process
opens the path seconds later. A `steplog sql` run meanwhile used to find the path free, open it
itself, and so make the stack's store process fail. Hence a second, earlier lock, the *stack
lock* (the file `steplog.stack` in the chDB directory), which says who holds it and where
they serve SQL:

- the stack (`steplog dev` before anything else, `steplog processors` when it runs alone) takes
  it for its life (`claim_for_stack`), waiting a bounded time while a command holds it;
- a command (`steplog sql`, `migrate`, `replay`, ...) tries to take it (`claim_for_command`): if
  it gets it, no stack is there and it may open the files itself (and holds the lock until it
  exits, so that a stack starting meanwhile waits for it); if a stack holds it, the command
  goes through that stack's SQL endpoint (or, for replay, refuses), never through the files.

flock: released by the kernel when the holder exits, however it exits; two descriptors of one
process conflict too (the dev process's demo, a command in the stack's own process, finds the
stack like any other command does).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from steplog.errors import ClickHousePathLockedError

__all__ = ["EngineUser", "claim_for_command", "claim_for_stack"]

STACK_FILE: Final = "steplog.stack"
_POLL_S: Final = 0.2


@dataclass(frozen=True)
class EngineUser:
    """Who holds a path's stack lock, from its file."""

    pid: int | None
    sql_port: int
    """Where the holder serves SQL on 127.0.0.1; 0 for a command, which serves none."""
    command: str

    @property
    def is_stack(self) -> bool:
        return self.sql_port > 0

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "another process"
        return f"{who} ({self.command})" if self.command else who


# Kept referenced: closing a descriptor would release its lock. With who we are: a command in
# the stack's own process (the demo's queries) goes through the endpoint like any other.
_held: dict[Path, tuple[IO[str], EngineUser]] = {}


def claim_for_command(path: Path) -> EngineUser | None:
    """Take the stack lock of chDB `path` for this command (None: the files are ours to open),
    or return who holds it."""
    return _try_claim(path, sql_port=0)


def claim_for_stack(
    path: Path, *, sql_port: int, wait: float, waiting: Callable[[EngineUser], None]
) -> None:
    """Take the stack lock of chDB `path` for this stack serving SQL on `sql_port`; while a
    command holds it, call `waiting` once and wait up to `wait` seconds for it to finish."""
    deadline = time.monotonic() + wait
    told = False
    while (holder := _try_claim(path, sql_port=sql_port)) is not None:
        if holder.is_stack or time.monotonic() > deadline:
            raise ClickHousePathLockedError(
                f"the embedded ClickHouse data at {path} is in use by {holder.describe()}"
                + (", another stack" if holder.is_stack else
                   f", which did not finish within {wait:g}s (STEPLOG_STACK_WAIT_S)")
                + "; stop it, or set STEPLOG_CLICKHOUSE_DSN to another chdb:///path"
            )
        if not told:
            waiting(holder)
            told = True
        time.sleep(_POLL_S)


def _try_claim(path: Path, *, sql_port: int) -> EngineUser | None:
    path = path.resolve()
    if path in _held:
        held = _held[path][1]
        return held if held.is_stack and not sql_port else None
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / STACK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _parse(handle.read())
        handle.close()
        return holder
    us = EngineUser(pid=os.getpid(), sql_port=sql_port, command=" ".join(sys.argv))
    handle.seek(0)
    handle.truncate()
    handle.write(f"{us.pid}\n{us.sql_port}\n{us.command}\n")
    handle.flush()
    _held[path] = (handle, us)
    return None


def _parse(text: str) -> EngineUser:
    # The holder writes its lines right after it takes the lock: they may not be there yet.
    lines = text.splitlines()
    pid = int(lines[0]) if lines and lines[0].isdigit() else None
    port = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0
    return EngineUser(pid=pid, sql_port=port, command=lines[2] if len(lines) > 2 else "")
