"""The bytes of a run's step events, written without pydantic: the SDK's hot path.

`run.step()` around a cheap function sends two events, and building two pydantic models and
encoding them costs about 19 µs, more than the function being measured is worth and as much as
an OpenTelemetry span. The parts that are the same for every event of a run (project, flow,
run_id) are encoded once per run, a step key once per run and key, and each event is then one
f-string: the id, timestamp, counters and durations are the only values computed per event.

The contract: every byte string written here decodes with `steplog.schemas.codec.decode_event`
to exactly the model the pydantic path would build from the same values, and carries every
field (defaults included) in the models' field order, so that for most events it is even
byte-for-byte what `codec.encode` writes (floats may be spelled differently: `1e-05` for
`1e-5`). tests/unit/test_client.py holds that against the models for many cases. A change to
the step event models must change this file too; that test is what tells.

Only values that are already valid go in: names are checked here (`encode_name`, with the limits
of `schemas.limits`, not a copy of them), metadata by `producers.metadata` (then written by
`encode_metadata`), outputs by `encode_output`, error texts and reasons by `producers.run`.
The numbers written here are in range by construction: attempts and seq come from per-run
counters starting at 1 (a run would need 2^32 attempts of one step to leave `Attempt`), and
durations from `perf_counter_ns` (finite, not negative).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Mapping
from itertools import count
from json.encoder import encode_basestring
from time import time_ns

from steplog.errors import InvalidEventError
from steplog.producers.metadata import MetadataValue
from steplog.schemas.base import SCHEMA_VERSION
from steplog.schemas.limits import NAME_MAX_CHARS, control_character_problem

__all__ = [
    "RunEventBytes",
    "encode_json",
    "encode_metadata",
    "encode_name",
    "encode_output",
    "fast_event_id",
    "utc_timestamp",
]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# json's own string escaper (C), without ASCII escaping: what _dumps writes for a str.
_quote: Callable[[str], str] = encode_basestring


def encode_json(value: object) -> str:
    """Compact JSON text of a JSON-compatible value (ValueError/TypeError otherwise)."""
    return _dumps(value)


def encode_metadata(metadata: Mapping[str, MetadataValue]) -> str:
    """The JSON object of metadata already cleaned by `producers.metadata.clean_metadata`
    (str keys; values exactly str, int, float, bool or None; floats finite).

    By hand, because json.dumps sets up an encoder on every call (1 µs before the first
    byte), which is most of the cost of a step that carries metadata.
    """
    if not metadata:
        return "{}"
    parts = []
    for key, value in metadata.items():
        if value is None:
            text = "null"
        elif value is True:
            text = "true"
        elif value is False:
            text = "false"
        elif type(value) is str:
            text = _quote(value)
        else:
            text = repr(value)  # int or float, as json.dumps writes them
        parts.append(f"{_quote(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def encode_name(field: str, value: object) -> str:
    """The JSON string of an identifier (project, flow, run id, step key), checked as
    `schemas.limits.Name` checks it; InvalidEventError naming the field otherwise.

    Called once per run for its names and once per run and step key (the run caches it), so
    the control-character search is not paid per event.
    """
    if not isinstance(value, str):
        raise InvalidEventError(field, f"expected a string, got {type(value).__name__}")
    if not 1 <= len(value) <= NAME_MAX_CHARS:
        raise InvalidEventError(
            field, f"must be 1 to {NAME_MAX_CHARS} characters, got {len(value)}: {value[:60]!r}"
        )
    text = str.__str__(value)
    problem = control_character_problem(text)
    if problem is not None:
        raise InvalidEventError(field, f"{problem}, got {text[:60]!r}")
    return _dumps(text)


def encode_output(value: object, max_chars: int) -> str:
    """The JSON of a step's return value, or "null" when it is not JSON or over `max_chars`.

    Recording an output is a best-effort diagnostic: a value that cannot be recorded must not
    make the step, which succeeded, look any different to the caller.
    """
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        return "null"
    return text if len(text) <= max_chars else "null"


# --- event ids and timestamps ---------------------------------------------------------------

# uuid4().hex costs 2.5 µs (os.urandom is a system call each time). A random 80-bit prefix per
# process followed by a per-process counter in decimal is as unique for de-duplication (a
# collision needs two processes drawing the same prefix: about 1e6² / 2^81 over a million
# processes) and costs a tenth of that. The prefix is drawn again in a forked child, which would
# otherwise repeat its parent's ids from the same counter value on. Decimal, not hex: a format
# spec (`:x`) costs more than the rest of the id.
_ids = count()
_id_prefix = ""


def _draw_id_prefix() -> None:
    global _id_prefix, _ids
    _id_prefix = f"{random.SystemRandom().getrandbits(80):020x}"
    _ids = count()


_draw_id_prefix()
os.register_at_fork(after_in_child=_draw_id_prefix)


def fast_event_id() -> str:
    """A unique event id: 20 hex digits (this process) and a decimal counter."""
    return f"{_id_prefix}{next(_ids)}"


# datetime.now(UTC).isoformat() costs 1.4 µs. Timestamps here are "<second>.<micros>Z": the
# second changes once a second, so it is formatted then and kept, keyed by the text of the
# seconds in str(micros since the epoch); the microseconds are that text's last six digits
# (zero-padded for free). One tuple, replaced whole, so that a thread never pairs one second's
# text with another's.
_second: tuple[str, str] = ("", "")


def _format_second(seconds: str) -> tuple[str, str]:
    global _second
    second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds))))
    _second = second
    return second


def utc_timestamp(ns: int) -> str:
    """ISO 8601 with microseconds and 'Z' for a `time.time_ns()` value (what events carry)."""
    micros = str(ns // 1000)
    second = _second  # read once: another thread may replace it meanwhile
    if second[0] != micros[:-6]:
        second = _format_second(micros[:-6])
    return f"{second[1]}.{micros[-6:]}Z"


# --- events ---------------------------------------------------------------------------------


class RunEventBytes:
    """Writes the events of one run, each with a fresh event id and the current time.

    Arguments are pre-encoded JSON fragments (`key`: a JSON string from `encode_name`;
    `metadata`, `output`: JSON text) and plain values; nothing is checked again here. The two
    events of every step (started, completed) are written out in full, id and timestamp
    included, in one function each: every call saved there is saved twice per step.
    """

    __slots__ = ("_completed", "_failed", "_run_completed", "_skipped", "_started")

    def __init__(self, project: str, flow: str, run_id: str) -> None:
        envelope = (
            f'"schema_version":{SCHEMA_VERSION},"project":{encode_name("project", project)},'
            f'"flow":{encode_name("flow", flow)},"run_id":{encode_name("run_id", run_id)},'
            '"attempt":'
        )
        # Everything between the event id and the attempt number, per type.
        self._started = f'","type":"step.started",{envelope}'
        self._completed = f'","type":"step.completed",{envelope}'
        self._failed = f'","type":"step.failed",{envelope}'
        self._skipped = f'","type":"step.skipped",{envelope}'
        self._run_completed = f'","type":"run.completed",{envelope}'

    def step_started(self, attempt: int, seq: int, key: str, metadata: str) -> bytes:
        micros = str(time_ns() // 1000)
        second = _second  # read once: another thread may replace it meanwhile
        if second[0] != micros[:-6]:
            second = _format_second(micros[:-6])
        text = (
            f'{{"event_id":"{_id_prefix}{next(_ids)}{self._started}{attempt},'
            f'"ts":"{second[1]}.{micros[-6:]}Z","seq":{seq},"step_key":{key},'
            f'"payload":{{"kind":"instrumented","input":null,"metadata":{metadata}}}}}'
        )
        try:
            return text.encode()
        except UnicodeEncodeError:
            return _utf8(text)

    def step_completed(
        self, attempt: int, seq: int, key: str, duration_ms: float, output: str, metadata: str
    ) -> bytes:
        micros = str(time_ns() // 1000)
        second = _second  # read once: another thread may replace it meanwhile
        if second[0] != micros[:-6]:
            second = _format_second(micros[:-6])
        text = (
            f'{{"event_id":"{_id_prefix}{next(_ids)}{self._completed}{attempt},'
            f'"ts":"{second[1]}.{micros[-6:]}Z","seq":{seq},"step_key":{key},'
            f'"payload":{{"output":{output},"duration_ms":{duration_ms!r},'
            f'"timed_out":false,"metadata":{metadata}}}}}'
        )
        try:
            return text.encode()
        except UnicodeEncodeError:
            return _utf8(text)

    def step_failed(
        self,
        attempt: int,
        seq: int,
        key: str,
        duration_ms: float,
        error_type: str,
        message: str,
        stack: str | None,
        metadata: str,
    ) -> bytes:
        stack_json = "null" if stack is None else _dumps(stack)
        return self._event(
            self._failed,
            attempt,
            seq,
            f'"step_key":{key},"payload":{{"error":{{"type":{_dumps(error_type)},'
            f'"message":{_dumps(message)},"stack":{stack_json}}},"duration_ms":{duration_ms!r},'
            f'"retry_at":null,"non_retriable":false,"metadata":{metadata}}}}}',
        )

    def step_skipped(
        self, attempt: int, seq: int, key: str, reason: str | None, metadata: str
    ) -> bytes:
        reason_json = "null" if reason is None else _dumps(reason)
        return self._event(
            self._skipped,
            attempt,
            seq,
            f'"step_key":{key},"payload":{{"reason":{reason_json},"metadata":{metadata}}}}}',
        )

    def run_completed(self, seq: int, output: str) -> bytes:
        return self._event(self._run_completed, 1, seq, f'"payload":{{"output":{output}}}}}')

    @staticmethod
    def _event(head: str, attempt: int, seq: int, rest: str) -> bytes:
        return _utf8(
            f'{{"event_id":"{fast_event_id()}{head}{attempt},'
            f'"ts":"{utc_timestamp(time_ns())}","seq":{seq},{rest}'
        )


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a badly decoded file name, say) inside a string value: UTF-8
        # has no bytes for it. Replacing it keeps the event valid JSON; failing would lose it.
        return text.encode("utf-8", "replace")
