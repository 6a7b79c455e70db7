"""The README is part of the interface: its queries and settings must be the real ones."""

import shlex
from pathlib import Path

from steplog.projections.queries import ANALYST_QUERIES
from steplog.settings import Settings, env_name
from tests.cli_commands import assert_steplog_command
from tests.readme import readme_blocks

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_analyst_query_in_the_readme_is_the_one_the_demo_runs() -> None:
    for query in ANALYST_QUERIES:
        assert f"```sql\n{query.sql}\n```" in README, f"README lacks: {query.title}"


def test_every_setting_is_documented_in_the_readme() -> None:
    for field in Settings.model_fields:
        assert f"`{env_name(field)}`" in README, f"{env_name(field)} is not in the README"


def test_the_first_commands_are_the_two_make_targets() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == [
        "make demo",
        "make test",
    ]


def test_every_steplog_command_in_the_readme_is_a_real_command() -> None:
    lines = [
        line.split(" #")[0].strip()
        for block in readme_blocks("sh")
        for line in block.splitlines()
    ]
    commands = [shlex.split(line) for line in lines
                if line.startswith((".venv/bin/steplog ", "steplog "))]
    assert len(commands) > 10
    for words in commands:
        assert_steplog_command(words[1:], f"README: {' '.join(words)}")
