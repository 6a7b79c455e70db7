"""How every `steplog` command reports Steplog's own errors, and Kafka's refusal to connect (the
cluster away, or a login it does not take: steplog/kafka.py `start` says which): one clear
line on stderr and exit status 2 (a traceback is for bugs, not for bad input)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from aiokafka.errors import KafkaConnectionError

from steplog.errors import SteplogError

P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print Steplog's deliberate errors as one line and exit 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (SteplogError, KafkaConnectionError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper
