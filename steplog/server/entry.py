"""The `steplog` console script: a clear message when the server extra is not installed.

The SDK installs without the command line's dependencies (typer, faust, ClickHouse); this
module imports nothing beyond the standard library so it can say what is missing.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from steplog.server.cli import app
    except ModuleNotFoundError as exc:
        sys.exit(
            f"error: the steplog command needs the server extra (missing module {exc.name!r}): "
            "pip install 'steplog[server]'"
        )
    app()
