"""The layer folders must ship as steplog.<layer> in a plain (non-editable) install too."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_wheel_maps_every_layer_under_steplog_with_its_data(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("steplog-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "steplog/__init__.py",
        "steplog/server/cli.py",
        "steplog/server/broker/process.py",
        "steplog/server/broker/pom.xml",
        "steplog/schemas/events.py",
        "steplog/schemas/json/event.schema.json",
        "steplog/schemas/examples/step.started.json",
        "steplog/producers/sender.py",
        "steplog/processors/__init__.py",
        "steplog/projections/migrations.py",
    ):
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(name.startswith(("schemas/", "producers/", "tests/")) for name in names)
