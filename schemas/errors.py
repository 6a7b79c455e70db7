"""The root of Steplog's errors and the wire format's own: `schemas` is the lowest layer and
imports nothing of ours, so what it raises is defined here; `steplog.errors` re-exports these
beside the rest of the hierarchy, which is where callers import them from."""

from __future__ import annotations

__all__ = ["EventTooLargeError", "InvalidEventError", "SteplogError"]


class SteplogError(Exception):
    """Base of every error Steplog raises deliberately."""


class InvalidEventError(SteplogError):
    """Bytes or a mapping that are not a valid Steplog event, command or signal.

    `field` is the dotted path of the offending field ("payload.output", "schema_version"),
    or "" when the problem is the whole message (undecodable bytes, oversized).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class EventTooLargeError(InvalidEventError):
    """An event whose encoded size is over the configured limit."""
