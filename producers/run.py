"""A run handle: `run.step()`, `run.skip()`, `run.complete()` around existing code.

    run = client.run("checkout", run_id="req_123")         # sends nothing
    total = run.step("charge-card", charge_card, cart)      # sync: returns charge_card's value
    total = await run.step("charge-card", charge_async, cart)   # async: an awaitable
    with run.step("reserve-stock"): ...                     # block form (also `async with`)

What a step sends, and when (seeds 000 and 001):

1. `step.started` before the wrapped code runs (kind `instrumented`, the step's metadata), so a
   step whose process dies mid-way shows as running (later: stuck), not as missing.
2. The wrapped code runs; its return value is passed through untouched.
3. `step.completed` (duration from `perf_counter`, the output only with record_output) or
   `step.failed` (exception type, message, stack with capture_stack), after which the ORIGINAL
   exception propagates: the same object with its traceback, never wrapped or replaced. Adding
   instrumentation must not change how the application behaves.

Every BaseException counts as a failure, including KeyboardInterrupt, SystemExit and
asyncio.CancelledError (the step did not finish; a cancelled request is exactly what an async
service wants to see on the dashboard), and is re-raised as it came.

Nothing here waits on the network: events go to the client's sink (EventSender buffers them and
delivers from its own thread). What can go wrong while sending, and who hears of it, is the
client's policy (see `Client`); the one rule in this file is that an event that cannot be sent
never takes the place of the wrapped code's result or exception.

Thread-safety: one Run may be used from several threads and tasks at once. `seq` and attempts
come from itertools.count, whose `next` is atomic under the GIL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from itertools import count
from time import perf_counter_ns
from types import CoroutineType, FunctionType, MethodType, TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from steplog.errors import InvalidEventError
from steplog.producers.event_bytes import (
    RunEventBytes,
    encode_json,
    encode_metadata,
    encode_name,
    encode_output,
)
from steplog.producers.metadata import clean_metadata
from steplog.producers.recorded_errors import error_message, error_stack, error_type
from steplog.schemas.limits import REASON_MAX_CHARS

if TYPE_CHECKING:
    from steplog.producers.client import Client

__all__ = ["Run", "StepScope"]

T = TypeVar("T")

_CO_COROUTINE: Final = inspect.CO_COROUTINE
_EMPTY: Final = "{}"


class Run:
    """One execution of a flow; make it with `client.run(flow, run_id=...)`."""

    __slots__ = (
        "client",
        "flow",
        "run_id",
        "_attempts",
        "_events",
        "_keys",
        "_last_attempt",
        "_message_key",
        "_seq",
        "_sink_send",
    )

    def __init__(self, client: Client, flow: str, run_id: str) -> None:
        self.client = client
        self.flow = flow
        self.run_id = run_id
        # Checks project, flow and run_id, and encodes them once for every event of the run.
        self._events = RunEventBytes(client.project, flow, run_id)
        self._message_key = run_id.encode()
        self._sink_send = client._sink_send
        # seq starts at 1: 0 is what record_step() sends, from a process that cannot know
        # where in the run it is.
        self._seq = count(1)
        self._attempts: dict[str, count[int]] = {}
        self._last_attempt: dict[str, int] = {}
        self._keys: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Run(flow={self.flow!r}, run_id={self.run_id!r})"

    # ------------------------------------------------------------------------ public API

    @overload
    def step(
        self,
        key: str,
        fn: None = None,
        /,
        *,
        metadata: Mapping[str, object] | None = None,
        record_output: bool | None = None,
    ) -> StepScope: ...

    @overload
    def step(
        self,
        key: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        metadata: Mapping[str, object] | None = None,
        record_output: bool | None = None,
        **kwargs: Any,
    ) -> T: ...

    def step(
        self,
        key: str,
        fn: Callable[..., Any] | None = None,
        /,
        *args: Any,
        metadata: Mapping[str, object] | None = None,
        record_output: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `fn(*args, **kwargs)` as step `key` of this run and return what it returns.

        An `async def` fn (or a fn returning a coroutine) gives a coroutine to await. Without
        fn, a context manager for `with` / `async with` around a block. `metadata` (flat
        scalars; secrets redacted, see producers.metadata) goes on `step.started`;
        `record_output` overrides the client's choice for this step. Keyword arguments named
        `metadata` or `record_output` are the step's, not fn's: wrap fn in a lambda for those.

        Raises, before fn runs: InvalidEventError (a bad key), MetadataError, and with
        throw_on_send_error SendError for earlier send failures.
        """
        try:
            key_json = self._keys[key]
        except (KeyError, TypeError):
            key_json = self._encode_key(key)
        metadata_json = _EMPTY if not metadata else encode_metadata(
            clean_metadata(metadata, self.client.secrets)
        )
        if fn is None:
            return StepScope(self, key, key_json, metadata_json)
        if (
            fn.__code__.co_flags & _CO_COROUTINE
            if type(fn) is FunctionType
            else _is_async_function(fn)
        ):
            return self._step_async(key, key_json, metadata_json, record_output, fn, args, kwargs)
        attempt = self._start(key, key_json, metadata_json)
        began = perf_counter_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(key_json, attempt, perf_counter_ns() - began, exc)
            raise  # the caller's exception, as it was: same object, same traceback
        if type(result) is CoroutineType:
            # A sync callable that returns a coroutine (`lambda: charge_async(cart)`): the step
            # ends when the coroutine does.
            return self._finish(result, key_json, attempt, began, record_output)
        self._completed(key_json, attempt, perf_counter_ns() - began, result, record_output)
        return result

    def skip(
        self, key: str, reason: str | None = None, *, metadata: Mapping[str, object] | None = None
    ) -> None:
        """Record that step `key` was intentionally not executed in this run (`step.skipped`)."""
        key_json = self._encode_key(key)
        if reason is not None:
            if not isinstance(reason, str):
                raise InvalidEventError(
                    "reason", f"expected a string, got {type(reason).__name__}"
                )
            if len(reason) > REASON_MAX_CHARS:
                raise InvalidEventError(
                    "reason",
                    f"is {len(reason)} characters, over the limit of {REASON_MAX_CHARS}",
                )
        metadata_json = _EMPTY if not metadata else encode_metadata(
            clean_metadata(metadata, self.client.secrets)
        )
        value = self._events.step_skipped(
            self._last_attempt.get(key, 1), next(self._seq), key_json, reason, metadata_json
        )
        self.client._send(self._message_key, value, surface=True)

    def complete(self, output: object = None) -> None:
        """Record that the run finished (`run.completed`), with an optional JSON output.

        Optional: a run of a declared flow is also complete once every step of its graph
        succeeded or was skipped. Raises InvalidEventError if output is not JSON.
        """
        try:
            output_json = encode_json(output)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError("output", f"not JSON-serializable: {exc}") from None
        value = self._events.run_completed(next(self._seq), output_json)
        self.client._send(self._message_key, value, surface=True)

    # -------------------------------------------------------------------- the mechanics

    def _encode_key(self, key: str) -> str:
        key_json = encode_name("step_key", key)
        self._keys[key] = key_json
        return key_json

    def _start(self, key: str, key_json: str, metadata_json: str) -> int:
        """Send step.started and return the attempt number; may raise (before the step)."""
        counter = self._attempts.get(key)
        if counter is None:
            counter = self._attempts.setdefault(key, count(1))
        attempt = next(counter)
        self._last_attempt[key] = attempt
        value = self._events.step_started(attempt, next(self._seq), key_json, metadata_json)
        # Client._send, with its happy path inlined (this runs on every step); the policy
        # for failures stays in the client.
        client = self.client
        if client._deferred:
            client._raise_deferred()
        try:
            self._sink_send(self._message_key, value)
        except Exception as exc:
            client._send_failed(self._message_key, value, exc, True)
        return attempt

    def _completed(
        self, key_json: str, attempt: int, elapsed_ns: int, result: object, record: bool | None
    ) -> None:
        """Send step.completed; never raises (the step's result is on its way to the caller)."""
        client = self.client
        try:
            output = "null"
            if client.record_output if record is None else record:
                output = encode_output(
                    client.secrets.redact_json(result), client.max_output_chars
                )
            value = self._events.step_completed(
                attempt, next(self._seq), key_json, elapsed_ns / 1e6, output, _EMPTY
            )
        except Exception as exc:  # a bug here must not cost the caller its result
            client._report(exc)
            return
        try:
            self._sink_send(self._message_key, value)
        except Exception as exc:
            client._send_failed(self._message_key, value, exc, False)

    def _failed(self, key_json: str, attempt: int, elapsed_ns: int, exc: BaseException) -> None:
        """Send step.failed; never raises (the caller's exception is on its way)."""
        client = self.client
        try:
            stack = _stack_of(exc) if client.capture_stack else None
            value = self._events.step_failed(
                attempt,
                next(self._seq),
                key_json,
                elapsed_ns / 1e6,
                error_type(exc),
                error_message(exc),
                stack,
                _EMPTY,
            )
        except Exception as error:  # a bug here must not replace the caller's exception
            client._report(error)
            return
        client._send(self._message_key, value, surface=False)

    async def _step_async(
        self,
        key: str,
        key_json: str,
        metadata_json: str,
        record: bool | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # The step starts when it is awaited, not when run.step() is called: that is when the
        # function starts running (asyncio.gather of several steps awaits them all at once).
        attempt = self._start(key, key_json, metadata_json)
        began = perf_counter_ns()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(key_json, attempt, perf_counter_ns() - began, exc)
            raise
        self._completed(key_json, attempt, perf_counter_ns() - began, result, record)
        return result

    async def _finish(
        self,
        coroutine: Coroutine[Any, Any, Any],
        key_json: str,
        attempt: int,
        began: int,
        record: bool | None,
    ) -> Any:
        try:
            result = await coroutine
        except BaseException as exc:
            self._failed(key_json, attempt, perf_counter_ns() - began, exc)
            raise
        self._completed(key_json, attempt, perf_counter_ns() - began, result, record)
        return result


class StepScope:
    """`with run.step(key):` / `async with run.step(key):` around a block of code.

    Entering sends step.started; leaving sends step.completed, or step.failed when the block
    raised (the exception is never suppressed). Each `with` is one attempt.
    """

    __slots__ = ("_attempt", "_began", "_key", "_key_json", "_metadata_json", "_run")

    def __init__(self, run: Run, key: str, key_json: str, metadata_json: str) -> None:
        self._run = run
        self._key = key
        self._key_json = key_json
        self._metadata_json = metadata_json
        self._attempt = 0
        self._began = 0

    @property
    def attempt(self) -> int:
        """The attempt number of the block running now (0 before it is entered)."""
        return self._attempt

    def __enter__(self) -> StepScope:
        self._attempt = self._run._start(self._key, self._key_json, self._metadata_json)
        self._began = perf_counter_ns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = perf_counter_ns() - self._began
        if exc is None:
            self._run._completed(self._key_json, self._attempt, elapsed, None, False)
        else:
            self._run._failed(self._key_json, self._attempt, elapsed, exc)

    async def __aenter__(self) -> StepScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _is_async_function(fn: Callable[..., Any]) -> bool:
    # inspect.iscoroutinefunction costs 0.3 µs; plain functions and bound methods, nearly every
    # step, are answered from the code flags directly.
    kind = type(fn)
    if kind is FunctionType:
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    if kind is MethodType:
        inner = fn.__func__  # type: ignore[attr-defined]
        if type(inner) is FunctionType:
            return bool(inner.__code__.co_flags & _CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


def _stack_of(exc: BaseException) -> str:
    tb = exc.__traceback__
    # Start at the caller's code: the wrapper frames of run.step are the SDK's, not the app's.
    while tb is not None and tb.tb_frame.f_code in _WRAPPER_CODES:
        tb = tb.tb_next
    return error_stack(exc, tb)


_WRAPPER_CODES: Final = frozenset(
    {Run.step.__code__, Run._step_async.__code__, Run._finish.__code__}
)
