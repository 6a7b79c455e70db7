"""Splitting the engine's own canonical text: type names and SET statements.

Only text the engine has written goes through here (a column's type in its Native output, the
canonical form of a SET from formatQuery), so it is well formed; a client's text never is split
by this module.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["split_top_level", "unquoted"]

_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
_ESCAPED: Final = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f"}


def split_top_level(text: str) -> list[str]:
    """`text` split at its commas outside brackets and quotes, each part stripped."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote, escaped = 0, "", False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def unquoted(literal: str) -> str:
    """A string literal's value (`'it\\'s'` -> `it's`); any other literal as it is written."""
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        return _ESCAPE.sub(lambda found: _ESCAPED.get(found.group(1), found.group(1)),
                           literal[1:-1])
    return literal
