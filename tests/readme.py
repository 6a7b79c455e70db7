"""The README's code blocks, for the tests that run them (its examples are part of the
interface: a renamed argument must fail a test, not a reader)."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def readme_blocks(language: str) -> list[str]:
    """Every fenced block of `language` in the README, in order."""
    return [body for lang, body in _BLOCK.findall(README) if lang == language]


def readme_python(containing: str) -> str:
    """The one Python block of the README that contains `containing`."""
    found = [block for block in readme_blocks("python") if containing in block]
    assert len(found) == 1, f"{len(found)} Python blocks of the README contain {containing!r}"
    return found[0]
