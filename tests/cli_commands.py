"""Checks that a `steplog ...` command line names a real command with options it takes, by
parsing it (never running it) with the CLI's own parser. Shared by the tests of the places that
spell commands out for people: docker-compose.yml and the README."""

from __future__ import annotations

import typer
import typer.core
import typer.main

import steplog.server.cli


def assert_steplog_command(arguments: list[str], where: str) -> None:
    """`arguments`: what follows `steplog`; `where`: named in the failure."""
    # typer's click objects (typer vendors click since 0.24: not the `click` package's).
    command = typer.main.get_command(steplog.server.cli.app)
    path = ["steplog"]
    remaining = list(arguments)
    while isinstance(command, typer.core.TyperGroup):
        assert remaining, f"{where}: `{' '.join(path)}` needs a subcommand"
        name = remaining.pop(0)
        context = typer.Context(command)
        subcommand = command.get_command(context, name)
        assert subcommand is not None, (
            f"{where}: `{' '.join(path)} {name}` is not a command; "
            f"expected one of {sorted(command.list_commands(context))}"
        )
        command, path = subcommand, [*path, name]
    # Parsing (without running) checks the options and their values too.
    try:
        command.make_context(" ".join(path), list(remaining))
    except Exception as exc:  # a usage error: unknown option, bad value, extra argument
        raise AssertionError(f"{where}: `{' '.join(path)}` cannot take {remaining}: {exc}") from None
