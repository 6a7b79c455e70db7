"""The ingest routes of the web service, for services that cannot run the Python SDK.

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
- Who may (steplog/server/web_auth.py): the three POSTs need role ingest (or admin), and every
  item's `project` (the flows' `?project=`) must be one the key covers: one item of another
  project and the answer is 403 naming its index and project, and nothing is sent. That check
  follows validation (a malformed body is 400 whoever sends it), and answers a project that
  does not exist as one that does. /healthz is open: probes carry no key.
- Shutdown: in-flight requests finish, then the senders flush what they hold (up to their
  close_timeout) in the app's cleanup.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from steplog.errors import FlowsFileError, InvalidEventError, SendError
from steplog.producers.flows_file import push_flows_async, read_flows
from steplog.producers.sender import EventSender, Message, SenderStats
from steplog.redaction import BUILT_IN_RULES, SecretRules, secret_rules
from steplog.schemas.base import Name
from steplog.schemas.codec import encode, json_kind, validate_event, validate_signal
from steplog.schemas.limits import NAME_MAX_CHARS, control_character_problem
from steplog.server.principals import Principal, Role
from steplog.server.web_auth import OPEN, Rule, WebAuth, principal_of
from steplog.server.web_errors import (
    BadRequest,
    check_query,
    error_response,
    json_response,
    query_flag,
)
from steplog.settings import Settings

__all__ = [
    "MAX_BODY_BYTES", "STALL_AFTER_S", "DeliveryWatch", "Encoded", "IngestRoutes", "read_messages",
]

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
_PROJECT: Final = TypeAdapter[str](Name)




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


class Encoded(NamedTuple):
    """One item of a request, validated: its project (whose key may send it) and its message."""

    project: str
    message: Message


ToMessage = Callable[[Any, int], Encoded]
"""Validates one parsed item against a limit in bytes and encodes it as (key, value)."""


def _event_message(
    item: Any, max_bytes: int, secrets: SecretRules = BUILT_IN_RULES
) -> Encoded:
    # Redacted as the SDK redacts (steplog/redaction.py): a service in another language
    # leaks no more into the log than one using the Python SDK.
    event = secrets.redact_event(validate_event(item, max_bytes=max_bytes))
    return Encoded(event.project, (event.run_id.encode(), encode(event, max_bytes=max_bytes)))


def _signal_message(item: Any, max_bytes: int) -> Encoded:
    signal = validate_signal(item, max_bytes=max_bytes)
    return Encoded(signal.project, (signal.name.encode(), encode(signal, max_bytes=max_bytes)))


def read_messages(
    body: bytes, *, ndjson: bool, noun: str, to_message: ToMessage, max_bytes: int
) -> tuple[list[Encoded], list[ItemError]]:
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
    messages: list[Encoded] = []
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


# --- the routes -----------------------------------------------------------------------------


@dataclass
class IngestRoutes:
    """The ingest routes over two senders (events topic, signals topic), which they own: the
    app's cleanup closes them, flushing what they hold."""

    settings: Settings
    events: EventSender
    signals: EventSender
    body_limit: int
    wait_timeout: float = WAIT_TIMEOUT_S
    stall_after: float = STALL_AFTER_S
    watches: dict[str, DeliveryWatch] = field(init=False)

    def __post_init__(self) -> None:
        self.watches = {
            "events": DeliveryWatch(self.events, self.stall_after),
            "signals": DeliveryWatch(self.signals, self.stall_after),
        }

    def add_to(self, app: web.Application, auth: WebAuth) -> None:
        app.on_cleanup.append(self._close_senders)
        ingest, router = Rule(Role.INGEST), app.router
        auth.allow(router.add_post(
            "/v1/events", self._ingest(
                "event", self.watches["events"],
                functools.partial(_event_message, secrets=secret_rules(self.settings.redact_keys)),
            )
        ), ingest)
        auth.allow(router.add_post(
            "/v1/signals", self._ingest("signal", self.watches["signals"], _signal_message)
        ), ingest)
        auth.allow(router.add_post("/v1/flows", self._post_flows), ingest)
        auth.allow(router.add_get("/healthz", self._healthz), Rule(OPEN))

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.body_limit:
            raise web.HTTPRequestEntityTooLarge(self.body_limit, request.content_length)
        return await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size

    def _ingest(
        self, noun: str, watch: DeliveryWatch, to_message: ToMessage
    ) -> Callable[[web.Request], Any]:
        settings, wait_timeout = self.settings, self.wait_timeout

        async def handle(request: web.Request) -> web.StreamResponse:
            check_query(request, ("wait",))
            wait = query_flag(request, "wait")
            body = await self._read_body(request)
            encoded, errors = await asyncio.to_thread(
                read_messages,
                body,
                ndjson=request.content_type in NDJSON_TYPES,
                noun=noun,
                to_message=to_message,
                max_bytes=settings.max_event_bytes,
            )
            if errors:
                return _invalid(noun, errors)
            foreign = _foreign(principal_of(request), noun, encoded)
            if foreign is not None:
                return foreign
            messages = [item.message for item in encoded]
            sender = watch.sender
            size = sum(len(key) + len(value) for key, value in messages)
            if sender.stats().buffered_bytes + size > sender.max_buffer_bytes:
                # Refused here rather than queued: the sender would make room by dropping
                # the oldest events, which were already answered 202.
                return error_response(
                    503,
                    f"the {noun} sender's buffer is full ({sender.stats().buffered_bytes} bytes "
                    f"waiting for Kafka at {sender.bootstrap}); nothing was accepted, retry later",
                    **{"Retry-After": _RETRY_AFTER_S},
                )
            lost_before = _lost(sender.stats())
            try:
                watch.hand_over(messages)
            except SendError as exc:  # closing: the server is shutting down
                return error_response(503, f"{exc}; nothing was accepted, retry later")
            if not wait:
                return json_response(202, {"accepted": len(messages)})
            if not await sender.flush_async(wait_timeout):
                return error_response(
                    503,
                    f"{len(messages)} {noun}(s) accepted but not acknowledged by Kafka at "
                    f"{sender.bootstrap} within {wait_timeout:g}s; they stay queued and are "
                    "retried, and resending them is safe (re-deliveries are dropped by event_id)",
                )
            lost = _lost(sender.stats()) - lost_before
            if lost:
                return error_response(
                    503,
                    f"{lost} {noun}(s) were refused by Kafka or dropped while this request "
                    "waited; resend them (re-deliveries are dropped by event_id)",
                )
            return json_response(202, {"accepted": len(messages), "acknowledged": True})

        return handle

    async def _post_flows(self, request: web.Request) -> web.StreamResponse:
        check_query(request, ("project",))
        project = request.query.get("project", self.settings.project)
        try:
            _PROJECT.validate_python(project)
        except ValidationError:
            wrong = control_character_problem(project) or (
                f"expected 1 to {NAME_MAX_CHARS} characters"
            )
            raise BadRequest(f"query parameter project={project!r}: {wrong}") from None
        principal = principal_of(request)
        if not principal.covers(project):
            return error_response(403, f"key {principal.key_id} does not cover project "
                                  f"{project!r}; nothing was accepted")
        body = await self._read_body(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"request body is not UTF-8: byte at offset {exc.start}") from None
        try:
            definitions = read_flows(text, project, source="request body")
        except FlowsFileError as exc:
            problem = {"field": exc.field, "line": exc.line, "problem": exc.problem}
            return json_response(
                400, {"error": f"invalid flows document: {exc}", "errors": [problem],
                      "accepted": 0}
            )
        try:
            await push_flows_async(self.settings, definitions)
        except SendError as exc:
            return error_response(503, str(exc))
        return json_response(
            200, {"accepted": len(definitions), "flows": [d.key for d in definitions]}
        )

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        senders: dict[str, Any] = {}
        problems: list[str] = []
        for name, watch in self.watches.items():
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
            return json_response(
                503, {"status": "failing", "error": "; ".join(problems), "senders": senders}
            )
        return json_response(200, {"status": "ok", "senders": senders})

    async def _close_senders(self, _: web.Application) -> None:
        # After the last request: whatever was answered 202 gets its chance to reach Kafka.
        for name, watch in self.watches.items():
            await asyncio.to_thread(watch.sender.close)
            stats = watch.sender.stats()
            log.info(
                "%s sender closed: %d sent, %d failed, %d dropped, %d never delivered",
                name, stats.sent, stats.failed, stats.dropped, watch.outstanding(stats),
            )


def _invalid(noun: str, errors: list[ItemError]) -> web.Response:
    items = [e for e in errors if e.index is not None]
    if items:
        message = f"{len(items)} invalid {noun}(s), the first at index {items[0].index}"
    else:
        message = errors[0].problem
    return json_response(
        400,
        {
            "error": f"{message}; nothing was accepted",
            "errors": [e.as_json() for e in errors[:_SHOWN_ERRORS]],
            "invalid": len(errors),
            "accepted": 0,
        },
    )


def _foreign(principal: Principal, noun: str, encoded: list[Encoded]) -> web.Response | None:
    """403 naming the items of projects the key does not cover; None when it covers all."""
    errors = [
        ItemError(index, "project", f"project {item.project!r} is not covered by key "
                  f"{principal.key_id}")
        for index, item in enumerate(encoded) if not principal.covers(item.project)
    ]
    if not errors:
        return None
    first = encoded[errors[0].index or 0].project
    return json_response(403, {
        "error": f"{len(errors)} {noun}(s) of projects key {principal.key_id} does not cover, "
                 f"the first at index {errors[0].index} (project {first!r}); nothing was "
                 "accepted",
        "errors": [e.as_json() for e in errors[:_SHOWN_ERRORS]],
        "accepted": 0,
    })


def _lost(stats: SenderStats) -> int:
    return stats.failed + stats.dropped
