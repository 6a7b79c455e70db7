"""`steplog api`: ingestion over HTTP, for services that cannot run the Python SDK.

Services in other languages write the JSON described by `schemas/json/` (test vectors in
`schemas/examples/`) and POST it here:

    POST /v1/events    events: a JSON array, one JSON object, or NDJSON (Content-Type
                       application/x-ndjson); 202 {"accepted": n}. Key = run_id.
    POST /v1/signals   signals, the same shapes; 202 {"accepted": n}. Key = the signal's name.
    POST /v1/flows     a flows document {"flows": [...]} (the format of .steplog/flows.json),
                       for `?project=` (default STEPLOG_PROJECT); 200 once Kafka has them.
    GET  /healthz      200 while the senders deliver, 503 with the problem otherwise.

Rules, and why:
- Every item is checked with the processors' own rules (`validate_event`, `validate_signal`,
  the STEPLOG_MAX_EVENT_BYTES limit), so what is accepted here is never dead-lettered there:
  that includes every field's limits (`schemas/limits.py`: integers within their ClickHouse
  column, finite numbers, timestamps DateTime64 can hold, names without control characters,
  bounded texts), each refused with 400 naming the field, the value and the limit. A number
  such as 1e400 is refused where it is, not read as Infinity and stored as null.
- All or nothing per request: one invalid item and the answer is 400 with every problem
  (`{"errors": [{"index", "field", "problem"}], "accepted": 0}`) and nothing is sent, so bad
  input never half-lands and the client may fix and resend the whole request.
- The body is limited to MAX_BODY_BYTES (or one event's limit, if larger); over it, 413.
- 202 means validated and queued in this process's bounded sender (`EventSender`), which
  delivers to Kafka in the background and retries while Kafka is away. `?wait=true` holds the
  answer until Kafka acknowledged the queue (503 when that takes over `wait_timeout`, or when
  events were refused or dropped meanwhile: resending is safe, consumers drop re-deliveries
  by event_id). When the sender's buffer cannot take a request, the answer is 503 with
  Retry-After instead of the sender dropping older, already accepted events.
- Health, judged per sender from its counters at each GET /healthz: failing when events were
  refused by Kafka or dropped since the last acknowledged delivery, or when events handed to it
  have waited `stall_after` seconds with nothing acknowledged (Kafka away, topic unwritable).
- Errors are JSON: `{"error": "<what was wrong and where>"}`, plus `errors` for invalid items.
- Shutdown (SIGINT/SIGTERM, handled by `web.run_app`): in-flight requests finish, then the
  senders flush what they hold (up to their close_timeout) in the app's cleanup.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import TypeAdapter, ValidationError

from steplog.errors import FlowsFileError, InvalidEventError, SendError, SteplogError, TopicError
from steplog.producers.flows_file import push_flows_async, read_flows
from steplog.producers.sender import EventSender, Message, SenderStats
from steplog.topics import topic_partitions
from steplog.schemas.base import Name
from steplog.schemas.codec import encode, json_kind, validate_event, validate_signal
from steplog.schemas.limits import NAME_MAX_CHARS, control_character_problem
from steplog.settings import Settings

__all__ = ["MAX_BODY_BYTES", "DeliveryWatch", "api_app", "serve_api"]

log = logging.getLogger("steplog.server.api")

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest request body (after Content-Encoding is undone): tens of thousands of events."""
NDJSON_TYPES: Final = frozenset({"application/x-ndjson", "application/jsonl"})
WAIT_TIMEOUT_S: Final = 30.0
STALL_AFTER_S: Final = 30.0
"""Events waiting this long with no acknowledgement make /healthz fail. Well above the sender's
longest retry pause (10 s) and a leader election, so a blip is not reported as an outage."""
_RETRY_AFTER_S: Final = "5"
_SHOWN_ERRORS: Final = 100
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})
_PROJECT: Final = TypeAdapter[str](Name)
_STARTUP_CHECK_S: Final = 15.0


# --- health ---------------------------------------------------------------------------------


@dataclass
class DeliveryWatch:
    """One sender, and whether it is delivering, judged from its counters.

    The app is the sender's only user, so `handed - sent - failed - dropped` is exactly what
    is still on its way (queued or in flight), which the sender's own `buffered` is not: a
    chunk being retried has left the buffer.
    """

    sender: EventSender
    stall_after: float = STALL_AFTER_S
    clock: Callable[[], float] = time.monotonic
    handed: int = field(default=0, init=False)
    """Events given to the sender."""
    _acknowledged: int = field(default=0, init=False)
    """`sent` at the last look."""
    _lost_at_acknowledgement: int = field(default=0, init=False)
    """`failed + dropped` at the last look that saw `sent` move."""
    _moving_at: float = field(default=0.0, init=False)
    """When delivery was last seen moving, or last had nothing to do."""

    def hand_over(self, messages: Sequence[Message]) -> None:
        if self.outstanding(self.sender.stats()) <= 0:
            # Idle until now: the stall clock starts with these events, not at the last look.
            self._moving_at = self.clock()
        for key, value in messages:
            self.sender.send(key, value)
        self.handed += len(messages)

    def outstanding(self, stats: SenderStats) -> int:
        return self.handed - stats.sent - stats.failed - stats.dropped

    def look(self) -> tuple[SenderStats, str | None]:
        """The sender's counters and what is wrong with its delivery (None when nothing)."""
        stats, now = self.sender.stats(), self.clock()
        if stats.sent != self._acknowledged:
            self._acknowledged = stats.sent
            self._lost_at_acknowledgement = stats.failed + stats.dropped
            self._moving_at = now
        waiting = self.outstanding(stats)
        if waiting <= 0:
            self._moving_at = now
        lost = stats.failed + stats.dropped - self._lost_at_acknowledgement
        if lost > 0:
            return stats, (
                f"{lost} event(s) refused by Kafka or dropped since the last acknowledged "
                f"delivery to topic {self.sender.topic!r}"
            )
        stalled = now - self._moving_at
        if waiting > 0 and stalled >= self.stall_after:
            return stats, (
                f"{waiting} event(s) waiting and none acknowledged for {stalled:.0f}s by Kafka "
                f"at {self.sender.bootstrap} (topic {self.sender.topic!r})"
            )
        return stats, None


# --- reading requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class ItemError:
    """What is wrong with one item of a request (index None: with the body as a whole)."""

    index: int | None
    field: str
    problem: str
    line: int | None = None
    """The NDJSON line, counted from 1."""

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"index": self.index, "field": self.field, "problem": self.problem}
        if self.line is not None:
            shown["line"] = self.line
        return shown


class _BadRequest(Exception):
    """A request that is wrong as a whole (not one item of it): answered 400 with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


ToMessage = Callable[[Any, int], Message]
"""Validates one parsed item against a limit in bytes and encodes it as (key, value)."""


def _event_message(item: Any, max_bytes: int) -> Message:
    event = validate_event(item, max_bytes=max_bytes)
    return event.run_id.encode(), encode(event, max_bytes=max_bytes)


def _signal_message(item: Any, max_bytes: int) -> Message:
    signal = validate_signal(item, max_bytes=max_bytes)
    return signal.name.encode(), encode(signal, max_bytes=max_bytes)


def read_messages(
    body: bytes, *, ndjson: bool, noun: str, to_message: ToMessage, max_bytes: int
) -> tuple[list[Message], list[ItemError]]:
    """Every item of a body encoded for its topic, or every problem found (then no message).

    JSON bodies are an array of items or a single object; NDJSON bodies are one item per line
    (blank lines skipped). CPU-bound: the app runs it in a worker thread.
    """
    errors: list[ItemError] = []
    items: list[tuple[int, int | None, Any]] = []  # (index, NDJSON line, parsed item)
    if ndjson:
        for number, raw in enumerate(body.split(b"\n"), start=1):
            if not raw.strip():
                continue
            index = len(items) + len(errors)
            try:
                items.append((index, number, _parse_json(raw)))
            except ValueError as exc:
                errors.append(ItemError(index, "", str(exc), number))
    else:
        try:
            document = _parse_json(body)
        except ValueError as exc:
            return [], [ItemError(None, "", f"request body is {exc}")]
        if isinstance(document, dict):
            document = [document]
        if not isinstance(document, list):
            return [], [ItemError(
                None, "", f"expected a JSON array of {noun}s or one {noun} object, got "
                f"{json_kind(document)} (NDJSON needs Content-Type application/x-ndjson)",
            )]
        items = [(index, None, item) for index, item in enumerate(document)]
    messages: list[Message] = []
    for index, line, item in items:
        if not isinstance(item, dict):
            errors.append(ItemError(
                index, "", f"expected a JSON object ({noun}), got {json_kind(item)}", line
            ))
            continue
        try:
            messages.append(to_message(item, max_bytes))
        except InvalidEventError as exc:
            errors.append(ItemError(index, exc.field, exc.problem, line))
    if errors:
        return [], sorted(errors, key=lambda error: error.index or 0)
    return messages, []


def _parse_json(data: bytes) -> Any:
    """The JSON value in `data`; ValueError saying where it is not UTF-8 or not JSON."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON (and every other language's parser) does not.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _query_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _BadRequest(f"query parameter {name}={request.query[name]!r}: expected true or false")


def _check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    # A misspelt parameter (?wiat=true) would otherwise be ignored without a word.
    for name in request.query:
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise _BadRequest(f"unknown query parameter {name!r}; expected {expected}")


# --- the app --------------------------------------------------------------------------------


def _json_response(status: int, body: Mapping[str, Any], **headers: str) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers or None)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return _json_response(status, {"error": message}, **headers)


def api_app(
    settings: Settings,
    events: EventSender,
    signals: EventSender,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    wait_timeout: float = WAIT_TIMEOUT_S,
    stall_after: float = STALL_AFTER_S,
) -> web.Application:
    """The ingest API over two senders (events topic, signals topic), which it owns from now
    on: the app's cleanup closes them, flushing what they hold."""
    body_limit = max(max_body_bytes, settings.max_event_bytes + 64 * 1024)
    watches = {
        "events": DeliveryWatch(events, stall_after),
        "signals": DeliveryWatch(signals, stall_after),
    }

    async def read_body(request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > body_limit:
            raise web.HTTPRequestEntityTooLarge(body_limit, request.content_length)
        return await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size

    def ingest(noun: str, watch: DeliveryWatch, to_message: ToMessage) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            _check_query(request, ("wait",))
            wait = _query_flag(request, "wait")
            body = await read_body(request)
            messages, errors = await asyncio.to_thread(
                read_messages,
                body,
                ndjson=request.content_type in NDJSON_TYPES,
                noun=noun,
                to_message=to_message,
                max_bytes=settings.max_event_bytes,
            )
            if errors:
                return _invalid(noun, errors)
            sender = watch.sender
            size = sum(len(key) + len(value) for key, value in messages)
            if sender.stats().buffered_bytes + size > sender.max_buffer_bytes:
                # Refused here rather than queued: the sender would make room by dropping
                # the oldest events, which were already answered 202.
                return _error(
                    503,
                    f"the {noun} sender's buffer is full ({sender.stats().buffered_bytes} bytes "
                    f"waiting for Kafka at {sender.bootstrap}); nothing was accepted, retry later",
                    **{"Retry-After": _RETRY_AFTER_S},
                )
            lost_before = _lost(sender.stats())
            try:
                watch.hand_over(messages)
            except SendError as exc:  # closing: the server is shutting down
                return _error(503, f"{exc}; nothing was accepted, retry later")
            if not wait:
                return _json_response(202, {"accepted": len(messages)})
            if not await sender.flush_async(wait_timeout):
                return _error(
                    503,
                    f"{len(messages)} {noun}(s) accepted but not acknowledged by Kafka at "
                    f"{sender.bootstrap} within {wait_timeout:g}s; they stay queued and are "
                    "retried, and resending them is safe (re-deliveries are dropped by event_id)",
                )
            lost = _lost(sender.stats()) - lost_before
            if lost:
                return _error(
                    503,
                    f"{lost} {noun}(s) were refused by Kafka or dropped while this request "
                    "waited; resend them (re-deliveries are dropped by event_id)",
                )
            return _json_response(202, {"accepted": len(messages), "acknowledged": True})

        return handle

    async def post_flows(request: web.Request) -> web.StreamResponse:
        _check_query(request, ("project",))
        project = request.query.get("project", settings.project)
        try:
            _PROJECT.validate_python(project)
        except ValidationError:
            wrong = control_character_problem(project) or (
                f"expected 1 to {NAME_MAX_CHARS} characters"
            )
            raise _BadRequest(f"query parameter project={project!r}: {wrong}") from None
        body = await read_body(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadRequest(f"request body is not UTF-8: byte at offset {exc.start}") from None
        try:
            definitions = read_flows(text, project, source="request body")
        except FlowsFileError as exc:
            problem = {"field": exc.field, "line": exc.line, "problem": exc.problem}
            return _json_response(
                400, {"error": f"invalid flows document: {exc}", "errors": [problem],
                      "accepted": 0}
            )
        try:
            await push_flows_async(settings, definitions)
        except SendError as exc:
            return _error(503, str(exc))
        return _json_response(
            200, {"accepted": len(definitions), "flows": [d.key for d in definitions]}
        )

    async def healthz(request: web.Request) -> web.StreamResponse:
        senders: dict[str, Any] = {}
        problems: list[str] = []
        for name, watch in watches.items():
            stats, problem = watch.look()
            senders[name] = {
                "topic": watch.sender.topic,
                **stats.model_dump(),
                "outstanding": watch.outstanding(stats),
                "problem": problem,
            }
            if problem is not None:
                problems.append(f"{name}: {problem}")
        if problems:
            return _json_response(
                503, {"status": "failing", "error": "; ".join(problems), "senders": senders}
            )
        return _json_response(200, {"status": "ok", "senders": senders})

    async def close_senders(_: web.Application) -> None:
        # After the last request: whatever was answered 202 gets its chance to reach Kafka.
        for name, watch in watches.items():
            await asyncio.to_thread(watch.sender.close)
            stats = watch.sender.stats()
            log.info(
                "%s sender closed: %d sent, %d failed, %d dropped, %d never delivered",
                name, stats.sent, stats.failed, stats.dropped, watch.outstanding(stats),
            )

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _error(400, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413,
                f"request body is over the limit of {body_limit} bytes "
                f"({body_limit / 2**20:g} MiB); send it in several requests",
            )
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return _error(
                405, f"{request.method} {request.path}: method not allowed; use {allowed}",
                Allow=allowed,
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, f"{request.method} {request.path}: {exc.reason}")

    app = web.Application(client_max_size=body_limit, middlewares=[json_errors])
    app.on_cleanup.append(close_senders)
    app.router.add_post("/v1/events", ingest("event", watches["events"], _event_message))
    app.router.add_post("/v1/signals", ingest("signal", watches["signals"], _signal_message))
    app.router.add_post("/v1/flows", post_flows)
    app.router.add_get("/healthz", healthz)
    return app


def _invalid(noun: str, errors: list[ItemError]) -> web.Response:
    items = [e for e in errors if e.index is not None]
    if items:
        message = f"{len(items)} invalid {noun}(s), the first at index {items[0].index}"
    else:
        message = errors[0].problem
    return _json_response(
        400,
        {
            "error": f"{message}; nothing was accepted",
            "errors": [e.as_json() for e in errors[:_SHOWN_ERRORS]],
            "invalid": len(errors),
            "accepted": 0,
        },
    )


def _lost(stats: SenderStats) -> int:
    return stats.failed + stats.dropped


# --- serving --------------------------------------------------------------------------------


def serve_api(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API in the foreground until SIGINT/SIGTERM, then flush and stop."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_require_topics(settings))

    def report(exc: BaseException) -> None:
        log.warning("sending to Kafka at %s failed (retried when retriable): %r",
                    settings.kafka_bootstrap, exc)

    def sender(topic: str) -> EventSender:
        return EventSender(
            settings.kafka_bootstrap, topic, max_event_bytes=settings.max_event_bytes,
            on_error=report,
        )

    app = api_app(settings, sender(settings.topics.events), sender(settings.topics.signals))
    try:
        web.run_app(
            app, host=host, port=port,
            print=lambda _: log.info("steplog api on http://%s:%d (Kafka at %s, topics %s*)",
                                     host, port, settings.kafka_bootstrap, settings.topic_prefix),
        )
    except OSError as exc:
        raise SteplogError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _require_topics(settings: Settings) -> None:
    """Refuse to start without the topics: a missing one would otherwise mean silent retries,
    or a broker that auto-creates it with the wrong partition count."""
    names = settings.topics
    for topic in (names.events, names.signals, names.flows):
        try:
            await asyncio.wait_for(
                topic_partitions(settings.kafka_bootstrap, topic), _STARTUP_CHECK_S
            )
        except TopicError:
            raise
        except Exception as exc:
            raise TopicError(
                f"cannot check topic {topic!r}: Kafka at {settings.kafka_bootstrap} does not "
                f"answer ({exc!r})"
            ) from None
