"""The README is part of the interface: its queries and settings must be the real ones."""

from pathlib import Path

from steplog.projections.queries import ANALYST_QUERIES
from steplog.settings import Settings, env_name

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
