"""An exception as the SDK records it on a failed step or run: its type, message and stack,
cut to sizes that stay below the wire's limits (schemas/limits.py).

Both faces of the SDK record errors (instrumented steps in `run.py`, workflow steps and runs in
`step_run.py` and `pass_writes.py`, steps reported for others in `client.py`); they cut them the
same way here.
"""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import Final

from steplog.schemas.base import ErrorInfo
from steplog.schemas.limits import (
    ERROR_MESSAGE_MAX_CHARS,
    ERROR_STACK_MAX_CHARS,
    ERROR_TYPE_MAX_CHARS,
)

__all__ = ["MAX_ERROR_MESSAGE_CHARS", "MAX_STACK_CHARS", "cut_error_message", "error_message",
           "error_info", "error_stack", "error_type"]

MAX_ERROR_MESSAGE_CHARS: Final = 8 * 1024
"""An exception message longer than this is cut (its start is kept). Below the wire's limit
(`schemas.limits.ERROR_MESSAGE_MAX_CHARS`) with room for the note of how long it was: a
diagnostic, kept short so that a failing step in a loop does not fill the buffer."""
MAX_STACK_CHARS: Final = 32 * 1024
"""A formatted stack longer than this is cut (its end, where the exception was raised, is kept);
below `schemas.limits.ERROR_STACK_MAX_CHARS` with room for the note."""
assert MAX_ERROR_MESSAGE_CHARS + 64 <= ERROR_MESSAGE_MAX_CHARS
assert MAX_STACK_CHARS + 64 <= ERROR_STACK_MAX_CHARS


def cut_error_message(message: str) -> str:
    """An error message as the SDK records it: its start, up to MAX_ERROR_MESSAGE_CHARS."""
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + f"... [{len(message)} characters]"
    return message


def error_message(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not stop the failure being recorded
        message = f"<exception str() failed for {type(exc).__qualname__}>"
    return cut_error_message(message)


def error_type(exc: BaseException) -> str:
    return type(exc).__qualname__[:ERROR_TYPE_MAX_CHARS]


def error_stack(exc: BaseException, tb: TracebackType | None) -> str:
    """The stack of `exc` from `tb` on, its end kept when it is over MAX_STACK_CHARS."""
    stack = "".join(traceback.format_exception(type(exc), exc, tb))
    if len(stack) > MAX_STACK_CHARS:
        stack = f"[{len(stack) - MAX_STACK_CHARS} characters cut]\n" + stack[-MAX_STACK_CHARS:]
    return stack


def error_info(exc: BaseException) -> ErrorInfo:
    """The error of a failed step or run as it is written: type, message, stack."""
    return ErrorInfo(type=error_type(exc), message=error_message(exc),
                     stack=error_stack(exc, exc.__traceback__))
