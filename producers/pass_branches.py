"""The branches of one pass (the workflow function's task and every task that called a step),
and when the pass has settled: nothing executing and a branch blocked for good.

A step that parks (a sleep, a wait, a child run, a retry not yet due) blocks its branch; a
stop request blocks every branch at its next step ("held"). The pass settles once nothing is
executing and a branch is blocked, after a few loop turns in which nothing else happened
(other branches may be one turn away from a step of their own); then every branch is
cancelled (module `run_pass`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal, NoReturn

__all__ = ["SETTLE_HOPS", "PassBranches", "StopMode"]

StopMode = Literal["interrupt", "abandon", "cancel"]

SETTLE_HOPS: Final = 12
"""Event-loop turns with nothing executing before a pass counts as parked: enough for the
branches of nested gathers to replay their memoized steps and reach a step of their own."""
_CANCEL_GRACE: Final = 10.0


class PassBranches:
    """Counts what the branches of a pass are doing and sets `settled` when it is over."""

    def __init__(self) -> None:
        self.main: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.executing = 0
        self.parked = 0
        self.held = 0  # branches blocked by a stop
        self._activity = 0
        self._settled = asyncio.Event()
        self._verifier: asyncio.Task[None] | None = None
        self.stop: StopMode | None = None
        self.stop_reason = ""
        self.ended = False

    def request_stop(self, mode: StopMode, reason: str) -> None:
        """A stronger mode (cancel > abandon > interrupt) overrides a weaker one."""
        rank = {"interrupt": 0, "abandon": 1, "cancel": 2}
        if self.stop is not None and rank[self.stop] >= rank[mode]:
            return
        self.stop, self.stop_reason = mode, reason
        if mode == "interrupt":
            self._check_settled()
            return
        self._settled.set()

    def settle(self) -> None:
        """End the pass now (a write failed)."""
        self._settled.set()

    async def until_settled_or(self, main: asyncio.Task[Any]) -> None:
        """Wait until the function's task ends or the pass settles."""
        settled = asyncio.create_task(self._settled.wait())
        try:
            await asyncio.wait({main, settled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()

    def join(self) -> None:
        """The calling task is entering a step: it is a branch of the pass from now on."""
        task = asyncio.current_task()
        if task is not None and task is not self.main:
            self._tasks.add(task)
        self._activity += 1

    def in_main(self) -> bool:
        return asyncio.current_task() is self.main

    async def cancel_all(self) -> None:
        assert self.main is not None
        pending = [task for task in {self.main, *self._tasks} if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            # A step's thread cannot be cancelled: its await ends at once, the thread goes on
            # unobserved (its outcome is never written; a later pass runs the step again).
            await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        if self._verifier is not None:
            self._verifier.cancel()

    @contextmanager
    def executing_step(self) -> Iterator[None]:
        """A step executes (or writes) meanwhile: the pass cannot settle."""
        self.executing += 1
        try:
            yield
        finally:
            self.executing -= 1
            self._check_settled()

    async def writing(self, writes: Awaitable[None]) -> None:
        """Run a step's writes counted as executing (the pass cannot settle meanwhile)."""
        with self.executing_step():
            await writes

    async def give_turns(self) -> None:
        """Give other branches SETTLE_HOPS loop turns; this branch is about to execute, so
        the pass does not settle meanwhile."""
        self.executing += 1
        try:
            for _ in range(SETTLE_HOPS):
                await asyncio.sleep(0)
        finally:
            self.executing -= 1

    async def block(self, *, parked: bool) -> NoReturn:
        """Block the calling branch until the pass ends (it is then cancelled)."""
        if parked:
            self.parked += 1
        else:
            self.held += 1
        self._activity += 1
        self._check_settled()
        await asyncio.get_running_loop().create_future()  # never resolved
        raise AssertionError("a parked branch was resumed")  # pragma: no cover

    def _check_settled(self) -> None:
        """Called whenever a branch blocks or a step stops executing."""
        if self.executing or self._settled.is_set() or self._verifier is not None:
            return
        if self.parked or self.held or self.stop is not None:
            self._verifier = asyncio.get_running_loop().create_task(self._verify_settled())

    async def _verify_settled(self) -> None:
        # Other branches may be one loop turn away from a step of their own (a gather's
        # callbacks, a memoized step just returned): give them a few turns first.
        mark = self._activity
        for _ in range(SETTLE_HOPS):
            await asyncio.sleep(0)
        self._verifier = None
        if self.executing == 0 and self._activity == mark:
            self._settled.set()
        else:
            self._check_settled()
