"""Runner names: which worker a pinned run (`run_workflow(..., runner=)`) waits for.

A worker's runner name is `--runner NAME` (`Worker(runner=)`), by default its host's name, so
that a run can be pinned to the machine that has what it needs (a GPU, a mounted volume, a
local cache). Several workers may share one name: they share that runner's commands.
"""

from __future__ import annotations

import re
import socket

from steplog.errors import WorkflowError
from steplog.schemas.limits import NAME_MAX_CHARS, NAME_PATTERN

__all__ = ["check_runner_name", "default_runner_name"]


def check_runner_name(value: object, where: str) -> str:
    """`value` if it is a usable runner name (a schemas.limits.Name), else WorkflowError
    naming `where`, the value and what was expected."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= NAME_MAX_CHARS
        or not re.fullmatch(NAME_PATTERN, value)
    ):
        raise WorkflowError(
            f"{where}: {value!r} is not a runner name; expected 1 to {NAME_MAX_CHARS} "
            "characters without control characters (e.g. 'gpu-1')"
        )
    return value


def default_runner_name() -> str:
    """The host's name: a worker's runner name when none is given."""
    return check_runner_name(socket.gethostname(), "the host's name as runner name")
