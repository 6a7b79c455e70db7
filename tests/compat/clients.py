"""The compatibility suite's client programs (tests/compat/java, go, node): built by `make
compat-clients`, run against an endpoint as subprocesses, their output read back.

Each program prints one line per result row, `check<TAB>cell<TAB>...`, rendering cells the same
way (`as_lines` does it for the Python clients): timestamps in UTC to the microsecond, NULL as
`NULL`, arrays joined by commas. The SQL they run is handed to them here by environment, so the
suite keeps one copy of each query.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
COMPAT = REPOSITORY / "tests" / "compat"

GROUP_BY = ("SELECT flow, count() AS runs, countIf(status = 'completed') AS completed "
            "FROM runs_current GROUP BY flow ORDER BY flow")
# DateTime64(6, 'UTC'), Nullable(DateTime64(6, 'UTC')) and Array(String) columns.
TYPED = ("SELECT r.run_id, r.created_at, r.finished_at, s.step_keys FROM runs_current AS r "
         "INNER JOIN (SELECT run_id, arraySort(groupArray(step_key)) AS step_keys "
         "FROM steps_current GROUP BY run_id) AS s USING run_id ORDER BY run_id")
# One parameterized query in each client's placeholder style: bound by the client (JDBC's
# PreparedStatement, database/sql, DB-API's pyformat, SQLAlchemy's named) or by the engine.
PARAMETERIZED = ("SELECT run_id FROM runs_current "
                 "WHERE flow = {flow} AND step_count >= {steps} ORDER BY run_id")
POSITIONAL = PARAMETERIZED.format(flow="?", steps="?")
SERVER_SIDE = PARAMETERIZED.format(flow="{flow:String}", steps="{steps:UInt32}")
# What every program introspects: the timestamp columns of runs_current.
COLUMNS_SUFFIX = "ed_at"

Lines = dict[str, list[list[str]]]

_TIMEOUT_S = 120


class ClientFailed(Exception):
    """A client program exited non-zero: its own error, as the tool's user would see it."""


def build_clients() -> None:
    """`make compat-clients`: fetches and builds what changed, a no-op otherwise."""
    built = subprocess.run(["make", "--no-print-directory", "compat-clients"], cwd=REPOSITORY,
                           capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        raise RuntimeError(f"make compat-clients failed:\n{built.stdout}\n{built.stderr}")


def java_command() -> list[str]:
    target = COMPAT / "java" / "target"
    classpath = (target / "classpath.txt").read_text().strip()
    return ["java", "-cp", f"{target / 'classes'}{os.pathsep}{classpath}", "Compat"]


def go_command(mode: str, *arguments: str) -> list[str]:
    return [str(COMPAT / "go" / "bin" / "compat"), mode, *arguments]


def node_command() -> list[str]:
    return ["node", str(COMPAT / "node" / "compat.mjs")]


def run_client(command: list[str], *, port: int, database: str, key: str) -> Lines:
    """Run one program against the endpoint and read its lines; ClientFailed if it fails."""
    environment = {
        **os.environ, "COMPAT_PORT": str(port), "COMPAT_DATABASE": database, "COMPAT_KEY": key,
        "COMPAT_GROUP_BY": GROUP_BY, "COMPAT_TYPED": TYPED, "COMPAT_POSITIONAL": POSITIONAL,
        "COMPAT_SERVER_SIDE": SERVER_SIDE,
    }
    done = subprocess.run(command, env=environment, capture_output=True, text=True,
                          timeout=_TIMEOUT_S)
    if done.returncode != 0:
        raise ClientFailed(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    lines: Lines = {}
    for line in done.stdout.splitlines():
        check, *cells = line.split("\t")
        lines.setdefault(check, []).append(cells)
    return lines


def as_lines(check: str, rows: Iterable[Sequence[object]]) -> Lines:
    """Rows a Python client returned, rendered as the programs render theirs."""
    return {check: [[_cell(value) for value in row] for row in rows]}


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        at = value.astimezone(UTC) if value.tzinfo else value
        return at.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
