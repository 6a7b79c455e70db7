"""Conditions written by users (`wait_for_event(..., if_="event.data.amount > 100")`): CEL.

The language is Google's Common Expression Language (cel-spec), evaluated by the
`common-expression-language` package (a Rust interpreter behind Python bindings; about 14 µs
per evaluation of a compiled two-clause condition here, against 275 µs for the pure-Python
`cel-python`). CEL has no side effects, no loops and no I/O; an expression sees only the JSON
values bound to the names it is given, so a condition from a workflow's code can be evaluated
by the processors without trusting it. Never `eval`.

What users write: CEL (`== != < <= > >= && || ! in + - * / % ?:`, `has(event.data.x)`,
`size(...)`, `"x".startsWith(...)`, list and map literals), with `and`, `or` and `not` accepted
for `&&`, `||` and `!` (outside string literals and not after a `.`, so a field named `and`
still reads as one): the issue's own example, `event.data.amount > 100 and
event.data.currency == 'EUR'`, works as written.

A condition holds only when it evaluates to the boolean true. A missing field, a type error, a
division by zero or a non-boolean result is not an error at evaluation: the condition does not
hold (a signal without the field does not resolve the wait), exactly as an absent match path
never matches. Errors in the text itself are caught when the condition is compiled, where the
workflow declares it, naming the argument.

Besides conditions, a workflow's flow-control `priority` is an expression whose value is
used (`compile_expression`, `Expression.evaluate`): there an evaluation error is reported to
the caller, which decides what it means (processors/flow_gate.py: priority 0, and the reason
in the start's `flow_starts` row).

The package is imported on first use: it belongs to the `server` extra (the processors evaluate
conditions); a worker compiles a condition at the call to report a bad one there, and says
which package is missing when it is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Final

from pydantic import JsonValue

from steplog.errors import ExpressionError
from steplog.schemas.limits import LABEL_MAX_CHARS

if TYPE_CHECKING:
    import cel

__all__ = [
    "Condition", "Expression", "MAX_CONDITION_CHARS", "compile_condition", "compile_expression",
]

MAX_CONDITION_CHARS: Final = LABEL_MAX_CHARS
"""Longer conditions are refused (the wire's limit: a wait's registration carries it)."""

# A string literal (CEL: optional r/b prefixes, triple or single quotes, backslash escapes) or
# a word; only words are rewritten, so `'rock and roll'` keeps its `and`.
_TOKEN = re.compile(
    r"""(?P<string>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"))"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_]*)""",
    re.DOTALL,
)
# Replacements of the same length, so that CEL's error positions point into the user's text.
_ALIASES: Final = {"and": "&& ", "or": "||", "not": "!  "}


@dataclass(frozen=True)
class Expression:
    """A compiled expression; `evaluate` computes its value from JSON variables."""

    WHAT: ClassVar[tuple[str, str]] = ("an", "expression")
    """What the text is called in errors (with its article)."""

    text: str
    program: cel.Program

    def evaluate(self, variables: Mapping[str, JsonValue]) -> object:
        """The expression's value; ExpressionError naming the text and why when it has none
        for these variables (a missing field, a type error, a division by zero)."""
        try:
            return self.program.execute(dict(variables))
        except KeyError as exc:  # the library's word for a missing field or map key
            raise ExpressionError(f"{self.text!r}: no field {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the library raises whatever its Rust side did
            raise ExpressionError(f"{self.text!r}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Condition(Expression):
    """A compiled condition; `matches` evaluates it against JSON variables."""

    WHAT: ClassVar[tuple[str, str]] = ("a", "condition")

    def matches(self, variables: Mapping[str, JsonValue]) -> bool:
        """True only when the condition evaluates to the boolean true (module docstring)."""
        try:
            result = self.program.execute(dict(variables))
        except Exception:  # noqa: BLE001 - any evaluation error means "does not hold"
            return False
        return result is True


def compile_condition(text: str, *, field: str, names: Collection[str]) -> Condition:
    """The condition `text` compiled, for the argument `field`, with the variables `names`.

    Raises ExpressionError naming the field, the text and what is wrong: a syntax error (with
    CEL's position), a name that is not one of `names`, a text too long.
    """
    return Condition(text, _checked(Condition.WHAT, text, field, names))


def compile_expression(text: str, *, field: str, names: Collection[str]) -> Expression:
    """The expression `text` compiled (errors as `compile_condition`'s)."""
    return Expression(text, _checked(Expression.WHAT, text, field, names))


def _checked(
    kind: tuple[str, str], text: str, field: str, names: Collection[str]
) -> cel.Program:
    article, what = kind
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(
            f"{field}: expected {article} {what} (a CEL expression), got {text!r}"
        )
    if len(text) > MAX_CONDITION_CHARS:
        raise ExpressionError(
            f"{field}: the {what} has {len(text)} characters; at most "
            f"{MAX_CONDITION_CHARS} are allowed"
        )
    return _compiled(kind, text, field, tuple(sorted(names)))


@lru_cache(maxsize=1024)
def _compiled(
    kind: tuple[str, str], text: str, field: str, names: tuple[str, ...]
) -> cel.Program:
    # Cached: the processors evaluate the same few texts for every signal of a name, and a
    # workflow's priority for every start.
    article, what = kind
    try:
        import cel
    except ImportError:
        raise ExpressionError(
            f"{field}: {what}s need the 'common-expression-language' package "
            "(pip install 'steplog[server]')"
        ) from None
    try:
        program = cel.compile(_with_aliases(text))
    except Exception as exc:  # noqa: BLE001 - the library's parse errors are ValueErrors
        raise ExpressionError(f"{field}: {text!r} is not a valid {what}: {exc}") from None
    unknown = sorted(set(program.variables()) - set(names))
    if unknown:
        raise ExpressionError(
            f"{field}: {text!r} uses {', '.join(map(repr, unknown))}; {article} {what} can use "
            f"only {', '.join(map(repr, names))}"
        )
    return program


def _with_aliases(text: str) -> str:
    def replace(found: re.Match[str]) -> str:
        word = found.group("word")
        if word is None or word not in _ALIASES:
            return found.group(0)
        before = text[: found.start()].rstrip()
        if before.endswith("."):  # a field named `and`: event.data.and
            return word
        return _ALIASES[word]

    return _TOKEN.sub(replace, text)

