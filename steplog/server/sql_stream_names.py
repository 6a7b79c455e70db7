"""The *WithNames / *WithNamesAndTypes formats streamed: each block's repeated header cut.

chDB's `send_query` writes every block as a whole document, so in these formats each block
starts with the columns' names (and types) again (measured on chDB 4.4). The header is found
in the first block by the format's own grammar, never guessed from the rows, and cut from
every later block, which must start with the same bytes:
- TabSeparated, CSV and JSONCompact(Strings)EachRow families: one line of names, one more of
  types; names are escaped in TSV and JSON, so a line ends at the first newline, while CSV
  quotes them and may hold a newline inside quotes.
- RowBinaryWithNames(AndTypes): the column count (LEB128), then as many strings (length,
  bytes) of names, and as many of types.
TabSeparatedRaw and CustomSeparated with names are not here (answered whole): raw names may
hold the line separator, and custom delimiters come from settings.
"""

from __future__ import annotations

from typing import Final

from steplog.server.sql_errors import SqlError

__all__ = ["NAMED_FORMATS", "HeaderCutter"]

_TEXT: Final = ("TabSeparated", "TSV", "CSV", "JSONCompactEachRow", "JSONCompactStringsEachRow")
_BINARY: Final = ("RowBinary",)
NAMED_FORMATS: Final = frozenset(
    f"{family}{suffix}" for family in (*_TEXT, *_BINARY)
    for suffix in ("WithNames", "WithNamesAndTypes"))


def _header_rows(fmt: str) -> int:
    return 2 if fmt.endswith("WithNamesAndTypes") else 1


class HeaderCutter:
    """One result's blocks in a NAMED_FORMATS format: the first passed whole, the header cut
    from each next one. Raises SqlError (LOGICAL_ERROR) if a block does not start with it."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._header: bytes | None = None

    def cut(self, block: bytes) -> bytes:
        if self._header is None:
            self._header = block[:_header_length(self._fmt, block)]
            return block
        if not block.startswith(self._header):
            raise SqlError(49, "LOGICAL_ERROR",
                           f"a block of the {self._fmt} result does not start with its header")
        return block[len(self._header):]


def _header_length(fmt: str, block: bytes) -> int:
    rows = _header_rows(fmt)
    if fmt.startswith(_BINARY):
        return _binary_header_length(block, rows)
    quoted = fmt.startswith("CSV")
    end = 0
    for _ in range(rows):
        end = _line_end(block, end, quoted)
    return end


def _line_end(block: bytes, start: int, quoted: bool) -> int:
    """Where the line starting at `start` ends (after its newline); in CSV, a newline inside
    double quotes is part of a name (a doubled quote toggles twice: no change)."""
    inside = False
    for index in range(start, len(block)):
        byte = block[index]
        if quoted and byte == 0x22:
            inside = not inside
        elif byte == 0x0A and not inside:
            return index + 1
    raise SqlError(49, "LOGICAL_ERROR", "a result block ends inside its header")


def _binary_header_length(block: bytes, lists: int) -> int:
    count, position = _leb128(block, 0)
    for _ in range(count * lists):
        size, position = _leb128(block, position)
        position += size
    if position > len(block):
        raise SqlError(49, "LOGICAL_ERROR", "a result block ends inside its header")
    return position


def _leb128(block: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(block):
        byte = block[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise SqlError(49, "LOGICAL_ERROR", "a result block ends inside its header")
