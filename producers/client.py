"""The instrumentation client: what a service creates once and wraps its steps with.

    client = steplog.Client(project="shop", on_error=log.warning)
    run = client.run("checkout", run_id=request_id)
    total = run.step("charge-card", charge_card, cart)
    client.record_step(flow_key="checkout", run_id=request_id, step_key="ship", status="success")

    client.send_event("order.placed", data={"id": 7})          # durable workflows: a signal,
    run = client.start("order.process", data={"id": 7}, app="shop")     # a run (its id),
    output = run.result(timeout=60)                              # its result, a cancel
    client.cancel(run, flow="order.process")

The send-failure policy, in one place (Run calls `_send` and `_report`):

- Sending never waits on the network and, by default, never raises: a failure (Kafka
  unreachable, a refused batch, an event over STEPLOG_MAX_EVENT_BYTES) goes to `on_error` and
  the application goes on. Telemetry is not worth an outage of the thing it observes.
- `throw_on_send_error=True` surfaces failures as exceptions, but only where raising cannot
  change what the application sees of its own code: at the start of the next step, skip,
  record_step, complete or flush, before any of the caller's code runs. A failure noticed while
  recording a step's end (the step already returned or raised) is kept and raised then; it
  never replaces the step's return value or exception.
- Mistakes in the call itself (a bad step key, metadata over its limits, a status record_step
  cannot send) raise at once, whatever the policy: they are programming errors, and the place
  to see them is the call site in development.

The workflow control calls (send_event, start, cancel, retrigger) are requests, not telemetry:
each waits for Kafka's acknowledgement and raises SendError without one (producers.control).
`start` and `retrigger` return a RunHandle (a str: the run id) whose `result()` waits for the
run's end; `run_handle(run_id)` makes one for a run started elsewhere (producers.run_results).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Final

import steplog.kafka as kafka
from steplog.errors import EventTooLargeError, InvalidEventError, SendError
from steplog.producers.control import ControlSender
from steplog.producers.control_messages import ControlMessages
from steplog.durations import Duration, Instant, duration_ms
from steplog.producers.event_bytes import encode_name
from steplog.producers.run import Run
from steplog.producers.run_results import (
    RunEndLookup,
    RunEndTail,
    RunHandle,
    clickhouse_http_lookup,
)
from steplog.producers.recorded_steps import recorded_step
from steplog.producers.sender import EventSender, SenderStats
from steplog.producers.sink import EventSink
from steplog.producers.spool import open_spool
from steplog.record_signer import record_signer
from steplog.redaction import BUILT_IN_RULES, SecretRules, secret_rules
from steplog.schemas.base import TriggerInfo, WireModel
from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode, validate_event
from steplog.settings import Settings, load_settings

__all__ = ["Client", "ErrorCallback"]

ErrorCallback = Callable[[BaseException], None]

DEFAULT_MAX_OUTPUT_CHARS: Final = 16 * 1024


class Client:
    """Sends the step events of one project; one per process is enough (it is thread-safe).

    Arguments not given come from the STEPLOG_* settings (`load_settings()`): the project, the
    Kafka bootstrap servers (and the STEPLOG_KAFKA_* security settings: SASL, TLS), the events
    topic and the project key.

    - project_key: the project's key (STEPLOG_PROJECT_KEY; `steplog keys create`), sent where
      the SDK speaks HTTP: the run-result lookup on the stack's SQL endpoint (`X-ClickHouse-Key`;
      a DSN with a password of its own keeps it). Events go to Kafka, where the STEPLOG_KAFKA_*
      credentials are what counts.

    - on_error: called (from any thread) with each send failure; exceptions it raises are
      ignored. A broker outage is told twice, not per attempt: `DeliveryFailing` when delivery
      starts failing (events wait in the buffer and are retried with backoff) and
      `DeliveryRecovered` (its `duration_s`, and the events `dropped`/`failed` meanwhile) when
      it works again; both are SendErrors (steplog.errors). Events lost for good are told
      each: refused by Kafka (the Kafka error), or refused here (EventTooLargeError, ...).
    - throw_on_send_error: surface send failures as SendError at the next call (module doc);
      a DeliveryFailing is raised once, a DeliveryRecovered never (recovering is no failure).
    - capture_stack: put the formatted traceback of a failed step on `step.failed`.
    - record_output: put a step's return value on `step.completed`. Off by default, because
      the return values of arbitrary application functions are where customer data, tokens and
      whole documents live (recorded outputs are redacted like metadata, steplog.redaction,
      but only what a key or a card number gives away is caught), and because encoding them
      costs time on every call. Turn it on per step
      (`run.step(..., record_output=True)`) where the value is a small, safe summary. Values
      that are not JSON or longer than max_output_chars are recorded as null.
    - sink: where encoded events go instead of Kafka (a MemorySink in tests).
    - run_end_lookup: how `run_handle(...).result()` asks ClickHouse whether a run started
      elsewhere has ended (producers.run_results); default: over HTTP, the server of
      STEPLOG_CLICKHOUSE_DSN or the stack's SQL endpoint.
    - max_buffer_bytes, linger_ms, chunk_size, close_timeout, max_event_bytes: passed to the
      EventSender (see producers.sender).
    - spool_dir, spool_max_bytes: spool to disk what the full buffer would drop, and send it
      first when Kafka is back, also after a restart (producers.spool; default
      STEPLOG_SPOOL_DIR, STEPLOG_SPOOL_MAX_BYTES when the client reads its settings).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        project_key: str | None = None,
        on_error: ErrorCallback | None = None,
        throw_on_send_error: bool = False,
        capture_stack: bool = False,
        record_output: bool = False,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        bootstrap: str | None = None,
        topic: str | None = None,
        settings: Settings | None = None,
        sink: EventSink | None = None,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        max_event_bytes: int | None = None,
        linger_ms: int = 5,
        chunk_size: int = 5000,
        close_timeout: float = 10.0,
        run_end_lookup: RunEndLookup | None = None,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int | None = None,
    ) -> None:
        if settings is None and (
            project is None or (sink is None and (bootstrap is None or topic is None))
        ):
            settings = load_settings()
        self.project: str = project if project is not None else _loaded(settings).project
        encode_name("project", self.project)
        self.on_error = on_error
        self.throw_on_send_error = throw_on_send_error
        self.capture_stack = capture_stack
        self.record_output = record_output
        self.max_output_chars = max_output_chars
        if max_event_bytes is None:
            max_event_bytes = settings.max_event_bytes if settings else DEFAULT_MAX_BYTES
        self.max_event_bytes: int = max_event_bytes
        # What every path of this client into the log redacts (steplog.redaction): the
        # built-in rules, plus STEPLOG_REDACT_KEYS when the client has settings.
        self.secrets: SecretRules = (
            secret_rules(settings.redact_keys) if settings is not None else BUILT_IN_RULES
        )
        if project_key is None and settings is not None and settings.project_key is not None:
            project_key = settings.project_key.get_secret_value()
        self._project_key = project_key
        # Signed with the project key, else the settings' own; with neither, the sender's
        # default: the environment's (steplog/record_signer.py).
        self._signer = record_signer(settings, project_key)
        if sink is None:
            sink = EventSender(
                _kafka_target(bootstrap, settings),
                topic or _loaded(settings).topics.events,
                max_buffer_bytes=max_buffer_bytes,
                max_event_bytes=max_event_bytes,
                chunk_size=chunk_size,
                linger_ms=linger_ms,
                on_error=on_error,
                throw_on_send_error=throw_on_send_error,
                close_timeout=close_timeout,
                spool=open_spool(spool_dir, spool_max_bytes, settings),
                signer=self._signer,
            )
        self.sink: EventSink = sink
        self._sink_send = sink.send  # bound once: it is called twice per step
        self._deferred: list[BaseException] = []
        self._deferred_lock = threading.Lock()
        # Workflow control calls (send_event, start, cancel, retrigger): their own producer,
        # made at the first such call (producers.control).
        self._settings = settings
        self._bootstrap = bootstrap
        self._events_topic = topic
        self._control: ControlSender | None = None
        self._control_lock = threading.Lock()
        # Run results (RunHandle.result): one tail of the events topic for every handle, made
        # when the first handle is.
        self._run_end_lookup = run_end_lookup
        self._run_ends: RunEndTail | None = None

    # ------------------------------------------------------------------------ public API

    def run(self, flow: str, *, run_id: str | None = None) -> Run:
        """A handle on one run of `flow` (the slug in .steplog/flows.json). Sends nothing.

        `run_id` ties the run's events together; use the natural id at hand (a request id, a
        job id, a webhook delivery id). Without one, a random id is made (`run.run_id`).
        """
        return Run(self, flow, run_id if run_id is not None else uuid.uuid4().hex)

    def record_step(
        self,
        *,
        flow_key: str,
        run_id: str,
        step_key: str,
        status: str,
        metadata: Mapping[str, object] | None = None,
        error: str | BaseException | None = None,
        output: object = None,
        duration_ms: float | None = None,
        reason: str | None = None,
        attempt: int = 1,
    ) -> None:
        """Record a step that ran where it could not be wrapped (another service, a callback).

        status: running, success/succeeded/completed, error/failed or skipped (seed SDK words
        are accepted). `error` (a message or an exception) only with a failed status, `output`
        with a completed one, `duration_ms` with either, `reason` with skipped. Its `seq` is 0:
        this process cannot know the run's order, and the fold orders by status precedence.

        Raises InvalidEventError naming the argument for anything that cannot be sent.
        """
        mapping = recorded_step(
            self.project, self.secrets, flow_key=flow_key, run_id=run_id, step_key=step_key,
            status=status, metadata=metadata, error=error, output=output,
            duration_ms=duration_ms, reason=reason, attempt=attempt,
        )
        # The slow path on purpose: record_step is rare, and the models' validation turns a
        # bad argument into an error naming it ("flow", "payload.duration_ms").
        try:
            event = validate_event(mapping, max_bytes=self.max_event_bytes)
        except EventTooLargeError as exc:
            self._refuse_oversized(exc)
            return
        value = encode(event, max_bytes=self.max_event_bytes)
        self._send(run_id.encode(), value, surface=True)

    # ------------------------------------------------- durable workflows: control calls
    #
    # Each call returns once Kafka acknowledged the message (SendError if it could not) and
    # raises InvalidEventError naming the argument for anything that cannot be sent. Each has
    # an `*_async` twin for asyncio code.

    def send_event(
        self, name: str, data: object = None, *, app: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Send a signal `name` with `data`: it starts the workflows triggered by the name
        (only `app`'s, when given) and resumes the runs waiting for it. Returns its event id
        (pass `event_id` to make a retried send a duplicate the processors drop)."""
        topic, message = self._messages().signal(name, data, app, event_id)
        self._control_sender().send(topic, message.name, message)
        return message.event_id

    async def send_event_async(
        self, name: str, data: object = None, *, app: str | None = None,
        event_id: str | None = None,
    ) -> str:
        topic, message = self._messages().signal(name, data, app, event_id)
        await self._control_sender().send_async(topic, message.name, message)
        return message.event_id

    def start(
        self, workflow: str, data: object = None, *, app: str | None = None,
        start_at: Instant | None = None, run_id: str | None = None,
        idempotency_key: str | None = None, idempotency_window: Duration = "24h",
        expires_after: Duration | None = None,
    ) -> RunHandle:
        """Start a run of `workflow` with `data` as its input; returns its RunHandle: the run
        id (a str, as before) whose `result(timeout=...)` waits for the run's output.

        With `app` and no `start_at`: a start_run command to that app's workers. With
        `start_at` (an aware datetime, ISO string or epoch ms): a run.scheduled event; the
        processors start it when due. Without `app`: a run.scheduled due now, and the
        processors resolve which app defines the workflow. `expires_after` ("15m", ms): a run
        the processors could not start that long after its time ends `expired` instead.

        With `idempotency_key` (an order id, say): one run per key and workflow within
        `idempotency_window` (fixed windows of that length, default 24 h); a duplicate starts
        nothing and returns the handle of the run the first start made (its data is ignored).
        Such a start always goes through the processors (a run.scheduled).
        """
        if idempotency_key is not None:
            topic, key, message = self._idempotent_start(
                workflow, data, app, start_at, run_id, idempotency_key, idempotency_window
            )
            self._control_sender().send(topic, key, message)
            return self._existing_run(key, workflow)
        topic, key, message = self._messages().start(
            workflow, data, app, start_at, run_id, None, None, expires_after
        )
        return self._send_start(topic, key, message, workflow)

    async def start_async(
        self, workflow: str, data: object = None, *, app: str | None = None,
        start_at: Instant | None = None, run_id: str | None = None,
        idempotency_key: str | None = None, idempotency_window: Duration = "24h",
        expires_after: Duration | None = None,
    ) -> RunHandle:
        if idempotency_key is not None:
            topic, key, message = self._idempotent_start(
                workflow, data, app, start_at, run_id, idempotency_key, idempotency_window
            )
            await self._control_sender().send_async(topic, key, message)
            return self._existing_run(key, workflow)
        topic, key, message = self._messages().start(
            workflow, data, app, start_at, run_id, None, None, expires_after
        )
        return await self._send_start_async(topic, key, message, workflow)

    def _idempotent_start(
        self, workflow: str, data: object, app: str | None, start_at: Instant | None,
        run_id: str | None, key: str, window: Duration,
    ) -> tuple[str, str, WireModel]:
        if run_id is not None:
            raise InvalidEventError(
                "run_id", "given with idempotency_key, which derives the run id; pass one"
            )
        window_ms = duration_ms(window, field="idempotency_window")
        return self._messages().idempotent_start(workflow, data, app, start_at, key, window_ms)

    def _existing_run(self, run_id: str, workflow: str) -> RunHandle:
        # No mark: a duplicate's run may have ended before this start was sent, so the handle
        # looks for its end the way a handle on a run started elsewhere does.
        return RunHandle(run_id, project=self.project, workflow=workflow, mark=None,
                         tail=self._run_end_tail())

    def run_handle(
        self, run_id: str, *, workflow: str | None = None, project: str | None = None
    ) -> RunHandle:
        """A handle on a run started elsewhere (by an event's trigger, a parent, a retrigger,
        another process), to wait for its result; sends nothing. The run may have ended long
        ago: `result()` then answers from ClickHouse (through `run_end_lookup`), else it reads
        the run's partition of the events topic from where the processors have got to.

        `workflow` only names the run in errors; `project` defaults to the client's.
        """
        return RunHandle(
            run_id, project=project if project is not None else self.project,
            workflow=workflow, mark=None, tail=self._run_end_tail(),
        )

    def cancel(self, run_id: str, *, flow: str, reason: str | None = None) -> None:
        """Cancel a run of workflow `flow`: writes run.cancelled (the processors then stop
        its worker, its timers, its waits and its child runs). A run that ends before the
        cancel is seen keeps its ending."""
        topic, key, message = self._messages().cancel(run_id, flow, reason)
        self._control_sender().send(topic, key, message)

    async def cancel_async(self, run_id: str, *, flow: str, reason: str | None = None) -> None:
        topic, key, message = self._messages().cancel(run_id, flow, reason)
        await self._control_sender().send_async(topic, key, message)

    def retrigger(
        self, run_id: str, *, workflow: str, app: str, data: object = None,
        trigger: TriggerInfo | None = None, new_run_id: str | None = None,
    ) -> RunHandle:
        """Run workflow `workflow` of `app` again from the start, with the input (`data`)
        and trigger of run `run_id`; the new run records `retrigger_of`. Returns the new
        run's RunHandle (its id)."""
        topic, key, message = self._messages().start(
            workflow, data, app, None, new_run_id, run_id, trigger
        )
        return self._send_start(topic, key, message, workflow)

    async def retrigger_async(
        self, run_id: str, *, workflow: str, app: str, data: object = None,
        trigger: TriggerInfo | None = None, new_run_id: str | None = None,
    ) -> RunHandle:
        topic, key, message = self._messages().start(
            workflow, data, app, None, new_run_id, run_id, trigger
        )
        return await self._send_start_async(topic, key, message, workflow)

    def _send_start(
        self, topic: str, key: str, message: WireModel, workflow: str
    ) -> RunHandle:
        # The mark is taken before the start is sent (on the sender's loop, in the same hop):
        # every event of the run comes after it (producers.run_results).
        tail = self._run_end_tail()
        mark = self._control_sender().send_after(tail.mark(key), topic, key, message)
        return RunHandle(key, project=self.project, workflow=workflow, mark=mark, tail=tail)

    async def _send_start_async(
        self, topic: str, key: str, message: WireModel, workflow: str
    ) -> RunHandle:
        tail = self._run_end_tail()
        mark = await self._control_sender().send_after_async(tail.mark(key), topic, key, message)
        return RunHandle(key, project=self.project, workflow=workflow, mark=mark, tail=tail)

    def _run_end_tail(self) -> RunEndTail:
        sender = self._control_sender()
        with self._control_lock:
            if self._run_ends is None:
                settings = self._control_settings()
                self._run_ends = RunEndTail(
                    sender,
                    _kafka_target(self._bootstrap, settings),
                    self._events_topic or settings.topics.events,
                    processors_group=settings.processors_group,
                    max_event_bytes=self.max_event_bytes,
                    lookup=self._run_end_lookup
                    or clickhouse_http_lookup(settings, project_key=self._project_key),
                )
            return self._run_ends

    def _control_sender(self) -> ControlSender:
        with self._control_lock:
            if self._control is None:
                settings = self._control_settings()
                self._control = ControlSender(
                    _kafka_target(self._bootstrap, settings),
                    max_event_bytes=self.max_event_bytes,
                    signer=self._signer or record_signer(settings),
                )
            return self._control

    def _control_settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _messages(self) -> ControlMessages:
        settings = self._control_settings()
        return ControlMessages(self.project, settings.topics,
                               self._events_topic or settings.topics.events, self.max_event_bytes)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every event sent so far is delivered; False on timeout. With
        throw_on_send_error, raises SendError for failures not yet surfaced."""
        done = self.sink.flush(timeout)
        self._raise_deferred()
        return done

    async def flush_async(self, timeout: float | None = 30.0) -> bool:
        """`flush` for asyncio code: waits in a worker thread, never on the caller's loop."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush (for up to `timeout`) and release the connection. Also done at interpreter
        exit (the sender registers it), so calling it is only needed to close early."""
        self.sink.close(timeout)
        if self._run_ends is not None:
            self._run_ends.close()  # before the loop it runs on stops
        if self._control is not None:
            self._control.close()

    def stats(self) -> SenderStats:
        """The sender's counters: sent, retried, dropped, failed, buffered, spooled."""
        return self.sink.stats()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------- the send-failure policy

    def _send(self, key: bytes, value: bytes, *, surface: bool) -> None:
        """Queue one event. `surface`: raising is allowed here (no caller code has run yet)."""
        if self._deferred and surface:
            self._raise_deferred()
        try:
            self._sink_send(key, value)
        except Exception as exc:
            self._send_failed(key, value, exc, surface)

    def _send_failed(self, key: bytes, value: bytes, exc: Exception, surface: bool) -> None:
        if not self.throw_on_send_error:
            self._report(exc)  # e.g. EventTooLargeError, or a sender already closed
            return
        if not isinstance(exc, SendError):
            self._report(exc)  # SendErrors were reported by the sender as they happened
        if surface:
            raise exc
        self._defer(exc)
        if isinstance(exc, SendError):
            # The sender raised for earlier failures and did not queue this event; its error
            # list is now empty, so a second try queues it.
            try:
                self._sink_send(key, value)
            except Exception as again:
                self._report(again)
                self._defer(again)

    def _refuse_oversized(self, exc: EventTooLargeError) -> None:
        self._report(exc)
        if self.throw_on_send_error:
            raise exc

    def _report(self, exc: BaseException) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(exc)
        except Exception:  # a broken callback must not break the caller either
            pass

    def _defer(self, exc: BaseException) -> None:
        with self._deferred_lock:
            self._deferred.append(exc)

    def _raise_deferred(self) -> None:
        if not self._deferred:
            return
        with self._deferred_lock:
            errors, self._deferred = self._deferred, []
        if errors:
            raise SendError(
                f"{len(errors)} send failure(s) while recording earlier steps; "
                f"first: {errors[0]!r}"
            ) from errors[0]


def _loaded(settings: Settings | None) -> Settings:
    assert settings is not None, "settings are loaded whenever an argument is missing"
    return settings


def _kafka_target(bootstrap: str | None, settings: Settings | None) -> kafka.Kafka:
    """The cluster to send to: `bootstrap` when given, with the settings' security when there
    are settings (else this process's, steplog.kafka.resolve)."""
    if settings is None:
        assert bootstrap is not None, "settings are loaded whenever an argument is missing"
        return bootstrap
    target = kafka.access(settings)
    return target if bootstrap is None else replace(target, bootstrap=bootstrap)
