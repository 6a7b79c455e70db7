"""`steplog dev`'s processors, supervised: a child `steplog processors` process, restarted with
backoff when it exits unexpectedly (its store process died, it ran out of memory, someone
killed it), the reason logged.

The child gets the dev process's settings through its environment and runs in a session of its
own: a Ctrl-C at the terminal (SIGINT to the foreground process group) reaches only the dev
process, which then stops the child once with SIGTERM (the processors' graceful stop) and
waits for it; SIGTERM to the dev process does the same. The child dies with the dev process
if that one is killed (`--supervised-by`, PR_SET_PDEATHSIG). `on_ready` runs in this process,
once, when the first child's SQL endpoint answers (the demo queries it at once).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from steplog.errors import SteplogError
from steplog.projections.clickhouse import chdb_path
from steplog.server.sql_http import sql_endpoint_answers
from steplog.settings import Settings, child_environment

__all__ = ["ProcessorsSupervisor"]

log = logging.getLogger("steplog.dev")

_STOP_TIMEOUT_S: Final = 60.0
_READY_POLL_S: Final = 0.2


class ProcessorsExited(SteplogError):
    """The supervised processors exited without being asked to."""


class ProcessorsSupervisor:
    def __init__(self, settings: Settings, *, sql_port: int) -> None:
        self.settings = settings
        self.sql_port = sql_port
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Supervise until SIGINT/SIGTERM, then stop the child and return."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        ready = [on_ready] if on_ready is not None else []
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(ProcessorsExited),
                wait=wait_exponential(multiplier=1, min=1, max=30),
                sleep=self._pause,  # a stop cuts the backoff short
                before_sleep=_log_restart,
            ):
                with attempt:
                    if self._stopping.is_set():
                        return
                    self._run_child(ready)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_child(self, ready: list[Callable[[], None]]) -> None:
        command = [sys.executable, "-c", "from steplog.server.entry import main; main()", "processors",
                   "--sql-port", str(self.sql_port), "--supervised-by", str(os.getpid())]
        child = subprocess.Popen(command, env=child_environment(self.settings, every_setting=True),
                                 start_new_session=True)
        self._child = child
        log.warning("processors started (pid %d)", child.pid)
        if ready:
            threading.Thread(target=self._announce_when_up, args=(child, ready),
                             daemon=True).start()
        try:
            code = child.wait()
        finally:
            self._child = None
        if not self._stopping.is_set():
            raise ProcessorsExited(f"the processors (pid {child.pid}) {_exit_reason(code)}")

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _stop(self, signum: int, _: FrameType | None) -> None:
        if self._stopping.is_set():
            return
        log.warning("%s: stopping the processors", signal.Signals(signum).name)
        self._stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            threading.Thread(target=_kill_after, args=(child,), daemon=True).start()

    def _announce_when_up(
        self, child: subprocess.Popen[bytes], ready: list[Callable[[], None]]
    ) -> None:
        """Call (and forget) the `ready` hook once the child serves SQL (or runs, without an
        SQL endpoint); a child that exits first leaves it to the next one."""
        if chdb_path(self.settings.clickhouse_dsn) is not None:
            while not sql_endpoint_answers(self.sql_port):
                if child.poll() is not None or self._stopping.wait(_READY_POLL_S):
                    return
        if ready:
            ready.pop()()


def _kill_after(child: subprocess.Popen[bytes]) -> None:
    try:
        child.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("the processors (pid %d) did not stop within %.0fs: killing them",
                    child.pid, _STOP_TIMEOUT_S)
        child.kill()


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"were killed by {signal.Signals(-code).name}"
    return f"exited with status {code} (their log above says why)"


def _log_restart(state: RetryCallState) -> None:
    outcome = state.outcome
    reason = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("%s: restarting them in %.0fs (restart %d)", reason, delay, state.attempt_number)
