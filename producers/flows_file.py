"""`.steplog/flows.json`: the declared flows of a project, checked and pushed to the flows topic.

    {"flows": [{"slug": "checkout", "name": "Checkout", "step_deadline_ms": 30000,
                "steps": [{"sdk_step_key": "charge-card", "name": "Charge card",
                           "deadline_ms": 10000}, ...],
                "edges": [{"source": "reserve-stock", "target": "charge-card"}]}]}

The file is written by hand and read by a command, so every problem is reported the way a
compiler would: file, line and the path of the field (`flows[0].edges[2].target`), with what
was expected. Line numbers come from the parse itself: each JSON object's span is recorded,
and a key is looked for inside its own object only (nested objects skipped, followed by ':'),
so that a step's "name" is never mistaken for its flow's.

`push_flows` sends each definition to the compacted flows topic, key "<project>/<slug>", where
the processors (and replay) learn the graphs from.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_core import ErrorDetails

import steplog.kafka as kafka
from steplog.errors import FlowsFileError, SendError
from steplog.record_signer import record_signer
from steplog.schemas.codec import encode
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from steplog.schemas.record_signing import signature_headers
from steplog.settings import Settings

__all__ = ["DEFAULT_FLOWS_FILE", "load_flows_file", "push_flows", "push_flows_async", "read_flows"]

DEFAULT_FLOWS_FILE: Final = Path(".steplog") / "flows.json"

_TOP_FIELDS: Final = ("flows", "$schema")
# The fields a flow may have in the file: the definition's, minus what the push adds.
_FLOW_FIELDS: Final = tuple(
    name
    for name in FlowDefinition.model_fields
    if name not in {"type", "schema_version", "project", "ts"}
)
_FIELDS_BY_MODEL: Final[dict[str, tuple[str, ...]]] = {
    "flow": _FLOW_FIELDS,
    "step": tuple(FlowStep.model_fields),
    "edge": tuple(FlowEdge.model_fields),
}


def load_flows_file(path: Path | str, project: str) -> list[FlowDefinition]:
    """Every flow declared in the file, as definitions of `project` stamped with now.

    Raises FlowsFileError naming the file, line and field for: a missing or unreadable file,
    invalid JSON, a missing or unknown field, a value of the wrong type, duplicate keys in an
    object, duplicate step keys, edges to unknown steps and duplicate slugs.
    """
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowsFileError(
            shown, None, "", "no such file; declare the flows there or name another with --file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowsFileError(shown, None, "", f"cannot be read: {exc}") from None
    return read_flows(text, project, source=shown)


def read_flows(text: str, project: str, *, source: str) -> list[FlowDefinition]:
    """The flows declared in a flows document's text (a file's content, an HTTP body), with
    load_flows_file's checks; its errors name `source` where they would name the file."""
    document = _LocatedJson.parse(source, text)
    return _FlowsReader(source, document, project).read()


def push_flows(settings: Settings, definitions: Sequence[FlowDefinition]) -> None:
    """Send each definition to the flows topic and wait until Kafka has them (acks=all).

    For synchronous callers (the CLI); from asyncio code, await `push_flows_async`.
    """
    asyncio.run(push_flows_async(settings, definitions))


async def push_flows_async(settings: Settings, definitions: Sequence[FlowDefinition]) -> None:
    topic = settings.topics.flows
    target = kafka.access(settings)
    signer = record_signer(settings)
    producer = kafka.producer(
        target,
        client_id="steplog-flows",
        acks="all",
        enable_idempotence=True,
    )
    try:
        await kafka.start(producer, target)
        for definition in definitions:
            value = encode(definition, max_bytes=settings.max_event_bytes)
            await producer.send_and_wait(
                topic, value=value, key=definition.key.encode(),
                headers=signature_headers(signer, topic, value),
            )
    except KafkaError as exc:
        raise SendError(
            f"could not push flows to topic {topic!r} at {settings.kafka_bootstrap}: {exc!r}"
        ) from exc
    finally:
        await producer.stop()


# --- reading the flows --------------------------------------------------------------------


class _FlowsReader:
    """Checks one parsed file, flow by flow, and raises at the first problem."""

    def __init__(self, path: str, document: _LocatedJson, project: str) -> None:
        self.path = path
        self.document = document
        self.project = project
        self.ts = datetime.now(UTC)

    def read(self) -> list[FlowDefinition]:
        root = self.document.value
        if not isinstance(root, _JsonObject):
            self._raise("", f'expected an object {{"flows": [...]}}, got {_kind(root)}', None)
        self._check_keys(root, "", _TOP_FIELDS)
        if "flows" not in root:
            self._raise("flows", "required field is missing", root)
        flows = root["flows"]
        if not isinstance(flows, list):
            self._raise("flows", f"expected an array of flows, got {_kind(flows)}", root, "flows")
        definitions: list[FlowDefinition] = []
        first_slug: dict[str, int] = {}
        for index, flow in enumerate(flows):
            where = f"flows[{index}]"
            if not isinstance(flow, _JsonObject):
                self._raise(where, f"expected an object, got {_kind(flow)}", root, "flows")
            definition = self._flow(flow, where)
            if definition.slug in first_slug:
                self._raise(
                    f"{where}.slug",
                    f"flow {definition.slug!r} is already declared at "
                    f"flows[{first_slug[definition.slug]}]",
                    flow,
                    "slug",
                )
            first_slug[definition.slug] = index
            definitions.append(definition)
        return definitions

    def _flow(self, flow: _JsonObject, where: str) -> FlowDefinition:
        # Unknown and repeated keys first, with their own lines: pydantic would report an
        # unknown key too, but not a repeated one (the parse already kept the last).
        self._check_keys(flow, where, _FLOW_FIELDS)
        for list_name, model in (("steps", "step"), ("edges", "edge")):
            items = flow.get(list_name)
            for index, item in enumerate(items if isinstance(items, list) else []):
                if isinstance(item, _JsonObject):
                    self._check_keys(item, f"{where}.{list_name}[{index}]", _FIELDS_BY_MODEL[model])
        try:
            return FlowDefinition.model_validate({**flow, "project": self.project, "ts": self.ts})
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            located = [error for error in errors if error["loc"]]
            if located:
                self._field_error(flow, where, located[0])
            self._graph_error(flow, where, errors)

    def _field_error(self, flow: _JsonObject, where: str, error: ErrorDetails) -> NoReturn:
        """A field is missing or has the wrong type: raise at the field's line, or at the
        line of the object it is missing from."""
        location = error["loc"]
        field = where + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in location
        )
        # Walk down to the innermost object on the path, and the key leading out of it.
        anchor, key = flow, ""
        current: Any = flow
        for part in location:
            if isinstance(current, _JsonObject) and isinstance(part, str):
                anchor, key = current, part
                current = current.get(part)
            elif isinstance(current, list) and isinstance(part, int) and part < len(current):
                current = current[part]
                if isinstance(current, _JsonObject):
                    anchor, key = current, ""
            else:
                break
        if error["type"] == "missing":
            self._raise(field, "required field is missing", anchor)
        self._raise(field, f"{error['msg']}, got {_shown(error['input'])}", anchor, key)

    def _graph_error(self, flow: _JsonObject, where: str, errors: list[ErrorDetails]) -> NoReturn:
        """The definition's own graph checks failed (the fields are valid by now); find the
        step or edge at fault for its line, in the order FlowDefinition checks them."""
        steps: list[_JsonObject] = flow["steps"]
        edges: list[_JsonObject] = flow.get("edges", [])
        keys: set[str] = set()
        for index, step in enumerate(steps):
            if step["sdk_step_key"] in keys:
                self._raise(
                    f"{where}.steps[{index}].sdk_step_key",
                    f"step {step['sdk_step_key']!r} is declared twice in this flow",
                    step,
                    "sdk_step_key",
                )
            keys.add(step["sdk_step_key"])
        for index, edge in enumerate(edges):
            for end in ("source", "target"):
                if edge[end] not in keys:
                    self._raise(
                        f"{where}.edges[{index}].{end}",
                        f"{edge[end]!r} is not one of the flow's steps ({', '.join(sorted(keys))})",
                        edge,
                        end,
                    )
            if edge["source"] == edge["target"]:
                self._raise(
                    f"{where}.edges[{index}]", "a step cannot lead to itself", edge, "target"
                )
        problem = "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in errors)
        self._raise(where, problem, flow)

    def _check_keys(self, obj: _JsonObject, where: str, allowed: tuple[str, ...]) -> None:
        prefix = f"{where}." if where else ""
        for key in obj.duplicate_keys:
            self._raise(
                prefix + key,
                "appears twice in this object (JSON parsers keep only the last)",
                obj,
                key,
            )
        for key in obj:
            if key not in allowed:
                self._raise(
                    prefix + key, f"unknown field; expected one of {', '.join(allowed)}", obj, key
                )

    def _raise(self, field: str, problem: str, obj: _JsonObject | None, key: str = "") -> NoReturn:
        """FlowsFileError at the line of `key` in `obj`, or of `obj` itself."""
        if obj is None:
            line = 1
        elif key:
            line = self.document.line_of_key(obj, key)
        else:
            line = self.document.line_of(obj)
        raise FlowsFileError(self.path, line, field, problem)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# --- JSON with positions ------------------------------------------------------------------


# Not in typeshed: the pure-Python object parser and scanner factory of the json module.
_parse_json_object: Callable[..., tuple[Any, int]] = getattr(json.decoder, "JSONObject")
_python_scanner: Callable[[json.JSONDecoder], Any] = getattr(json.scanner, "py_make_scanner")


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers where it was and which keys it repeated."""

    start: int = 0
    end: int = 0
    duplicate_keys: tuple[str, ...] = ()


class _LocatedJson:
    """A parsed document plus the character span of every object in it."""

    def __init__(self, text: str, value: Any, objects: list[_JsonObject]) -> None:
        self.text = text
        self.value = value
        self._objects = objects
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    @classmethod
    def parse(cls, path: str, text: str) -> _LocatedJson:
        objects: list[_JsonObject] = []
        decoder = json.JSONDecoder(object_pairs_hook=_object_of_pairs)

        def parse_object(
            s_and_end: tuple[str, int],
            strict: bool,
            scan_once: Callable[[str, int], tuple[Any, int]],
            object_hook: Any,
            object_pairs_hook: Any,
            memo: dict[str, str] | None = None,
        ) -> tuple[Any, int]:
            start = s_and_end[1] - 1  # the scanner has consumed the '{'
            value, end = _parse_json_object(
                s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo
            )
            value.start, value.end = start, end
            objects.append(value)
            return value, end

        # The C scanner parses objects internally; the Python one calls back parse_object,
        # which is what lets each object keep its position.
        decoder.parse_object = parse_object  # type: ignore[attr-defined]
        decoder.scan_once = _python_scanner(decoder)  # type: ignore[attr-defined]
        try:
            value = decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise FlowsFileError(
                path, exc.lineno, "", f"not valid JSON: {exc.msg} (line {exc.lineno}, "
                f"column {exc.colno})"
            ) from None
        except RecursionError:
            raise FlowsFileError(path, None, "", "not valid JSON: nested too deeply") from None
        return cls(text, value, objects)

    def line_of_offset(self, offset: int) -> int:
        return bisect.bisect_right(self._line_starts, offset)

    def line_of(self, obj: _JsonObject) -> int:
        return self.line_of_offset(obj.start)

    def line_of_key(self, obj: _JsonObject, key: str) -> int:
        """The line of `key` as a key of `obj` itself (not of an object nested in it)."""
        nested = [o for o in self._objects if obj.start < o.start and o.end <= obj.end]
        pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
        position = obj.start
        while (match := pattern.search(self.text, position, obj.end)) is not None:
            inside = next((o for o in nested if o.start <= match.start() < o.end), None)
            if inside is None:
                return self.line_of_offset(match.start())
            position = inside.end
        return self.line_of(obj)  # written with escapes: the object's line will do


def _object_of_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for key, _ in pairs:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
        obj.duplicate_keys = tuple(repeated)
    return obj
