"""Which signal resolves a wait: the one rule the signals consumer (processors/fold/signals.py)
and anything that plays its part in-process (a test harness) must share.

A signal resolves a registered wait when it matches it (`schemas.signals.wait_matches`: same
project and name, and the value at the wait's `match` path) and the wait's `condition`, if it
has one, holds for it (steplog/expressions.py, over `condition_variables(signal)`). A condition
that does not compile (written by a producer that did not check it) never holds: the wait then
ends by its timeout, as one whose signal never comes.
"""

from __future__ import annotations

from steplog.errors import ExpressionError
from steplog.expressions import compile_condition
from steplog.schemas.signals import (
    WAIT_CONDITION_NAMES,
    Signal,
    WaitRegistered,
    condition_variables,
    wait_matches,
)

__all__ = ["signal_resolves"]


def signal_resolves(wait: WaitRegistered, signal: Signal) -> bool:
    """Does `signal` resolve `wait`? (module docstring)"""
    if not wait_matches(wait, signal):
        return False
    if wait.condition is None:
        return True
    try:
        condition = compile_condition(wait.condition, field="condition",
                                      names=WAIT_CONDITION_NAMES)
    except ExpressionError:
        return False
    return condition.matches(condition_variables(signal))
