"""Values a workflow records (step inputs and outputs, run outputs) as JSON: what is returned
is what a replay will see, and what is not JSON is refused naming where it is."""

from __future__ import annotations

import math
from typing import Any

from pydantic import JsonValue

from steplog.errors import StepInputError, StepOutputError

__all__ = ["input_value", "shown", "to_json_value"]


def input_value(step_id: str, value: Any, what: str) -> JsonValue:
    """A step's recorded input (`what`: "input", "data") as JSON, or StepInputError."""
    try:
        return to_json_value(value, f"the {what} of step {step_id!r}")
    except StepOutputError as exc:
        raise StepInputError(str(exc)) from None


def to_json_value(value: Any, what: str) -> JsonValue:
    """`value` as JSON (tuples become lists), or StepOutputError naming the first part that
    is not JSON (where it is and its type). What is returned is what a replay will see."""
    problem: list[str] = []

    def convert(item: Any, path: str) -> JsonValue:
        if item is None or isinstance(item, (bool, str, int)):
            return item
        if isinstance(item, float):
            if math.isfinite(item):
                return item
            problem.append(f"{path} is {item!r}, which JSON cannot represent")
            raise _NotJson()
        if isinstance(item, (list, tuple)):
            return [convert(element, f"{path}[{index}]") for index, element in enumerate(item)]
        if isinstance(item, dict):
            converted: dict[str, JsonValue] = {}
            for key, element in item.items():
                if not isinstance(key, str):
                    problem.append(
                        f"{path} has a key {key!r} of type {type(key).__name__}; JSON object "
                        "keys are strings"
                    )
                    raise _NotJson()
                converted[key] = convert(element, f"{path}[{key!r}]")
            return converted
        problem.append(f"{path} is a {type(item).__module__}.{type(item).__qualname__}"
                       if type(item).__module__ != "builtins"
                       else f"{path} is a {type(item).__qualname__}")
        raise _NotJson()

    try:
        return convert(value, "value")
    except _NotJson:
        pass
    except RecursionError:
        problem.append("value is nested too deeply")
    raise StepOutputError(
        f"{what} a value that is not JSON-serializable: {problem[-1]}; return JSON "
        "(dict with str keys, list, str, int, float, bool, None)"
    )


class _NotJson(Exception):
    pass


def shown(value: Any) -> str:
    """A value for an error message, cut to 120 characters."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
