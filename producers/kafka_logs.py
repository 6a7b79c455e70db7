"""Keeps aiokafka's per-attempt log lines of the SDK's own Kafka clients out of the host's logs.

While a broker is away aiokafka logs every reconnect attempt ("Unable connect to node ...",
"Unable to update metadata ..."), and its metadata loop retries without backoff while a
partition has no leader: measured, about 10,000 lines a second on the host's stderr. The
sender logs an outage itself, one line when delivery starts failing and one when it recovers
(producers.sender), so aiokafka's lines from the sender add nothing but noise.

Why a filter, and why this one: the SDK never changes its host's logging configuration
(levels, handlers, propagation belong to the application), and aiokafka's loggers are shared
with any aiokafka client the host runs itself. A `logging.Filter` added to aiokafka's loggers
changes nothing for the host's own records: it only looks at records logged from the SDK's
delivery threads (by thread name, checked in the thread that logs) and lets one of each message
through per interval, so the first occurrence of each kind of problem stays visible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

# The loggers of the aiokafka modules a producer runs through. A logger's filters see only the
# records logged to it directly (not those of its children), hence the full list.
_AIOKAFKA_LOGGERS: Final = (
    "aiokafka",
    "aiokafka.client",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "aiokafka.producer.message_accumulator",
    "aiokafka.producer.transaction_manager",
)
SENDER_THREAD_PREFIX: Final = "steplog-sender-"
"""Names of the sender's delivery threads start with this."""
_ONE_LINE_PER_S: Final = 300.0

_installed = False
_install_lock = threading.Lock()


class SenderThreadLogLimit(logging.Filter):
    """Passes every record logged outside the threads whose name starts with `thread_prefix`;
    from those threads, one record per (logger, message template) every `interval_s` seconds."""

    def __init__(
        self,
        thread_prefix: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.thread_prefix = thread_prefix
        self.interval_s = interval_s
        self._clock = clock
        self._last_passed: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The thread that logs is the thread that runs this filter (Logger.handle), which is
        # also right when the host sets logging.logThreads = False.
        if not threading.current_thread().name.startswith(self.thread_prefix):
            return True
        # The template, not the formatted line: "Unable connect to node %s" is one message
        # whatever the node. The templates are aiokafka's constants, so the dict stays small.
        key = (record.name, record.msg)
        now = self._clock()
        last = self._last_passed.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last_passed[key] = now
        return True


def limit_sender_thread_logs() -> None:
    """Add the filter to aiokafka's loggers, once per process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        limit = SenderThreadLogLimit(SENDER_THREAD_PREFIX, _ONE_LINE_PER_S)
        for name in _AIOKAFKA_LOGGERS:
            logging.getLogger(name).addFilter(limit)
        _installed = True
