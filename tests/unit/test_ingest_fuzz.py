"""Property-based fuzzing of what arrives from outside: the ingest API's bodies and the event
decoder (issue 16). Whatever the bytes, the answer is a refusal that names what was wrong (an
item's index and field, or the body) and nothing half-lands; never an unexpected exception.

The bodies are mutations of the golden events (schemas/examples/): a field dropped, replaced by
a value of another kind, an extreme number, control characters, deep nesting; and raw bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steplog.schemas
from steplog.errors import InvalidEventError
from steplog.schemas.codec import decode_event
from steplog.schemas.events import EVENT_TYPES
from steplog.server.ingest import _event_message, read_messages

EXAMPLES = Path(steplog.schemas.__file__).parent / "examples"
GOLDEN = [json.loads((EXAMPLES / f"{kind}.json").read_text()) for kind in sorted(EVENT_TYPES)]
MAX_BYTES = 1024 * 1024

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["\x00", "\u0085", "9" * 400, "1e400", "2300-01-01T00:00:00Z", ""]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def mutated_event(draw: st.DrawFn) -> Any:
    event: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(GOLDEN))))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target: Any = event
        if "payload" in event and isinstance(event["payload"], dict) and draw(st.booleans()):
            target = event["payload"]
        if not target:
            break
        field = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[field]
        else:
            target[field] = draw(json_value)
    return event


def assert_refused_or_whole(
    body: bytes, *, ndjson: bool = False, items: int | None = None
) -> None:
    """Refused with reasons and nothing sent, or every item accepted (`items`, when known;
    an empty body is an empty request, accepted as nothing)."""
    messages, errors = read_messages(
        body, ndjson=ndjson, noun="event", to_message=_event_message, max_bytes=MAX_BYTES
    )
    if errors:
        assert messages == [], "an invalid request must send nothing"
        for error in errors:
            assert error.problem, error
            assert error.index is not None or error.field == "", error
    elif items is not None:
        assert len(messages) == items


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_event(), min_size=1, max_size=4))
def test_mutated_events_are_refused_by_index_and_field_or_accepted_whole(
    events: list[Any],
) -> None:
    assert_refused_or_whole(json.dumps(events).encode(), items=len(events))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_as_a_body_are_refused_with_a_reason(body: bytes, ndjson: bool) -> None:
    assert_refused_or_whole(body, ndjson=ndjson)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 mutated_event().map(lambda event: json.dumps(event).encode())))
def test_the_decoder_refuses_what_is_not_an_event_naming_the_problem(data: bytes) -> None:
    try:
        decode_event(data, max_bytes=MAX_BYTES)
    except InvalidEventError as exc:
        assert exc.problem
