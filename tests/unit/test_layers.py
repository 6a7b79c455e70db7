"""The layers point one way (README, Layout): every import inside the package is checked
against the order below, so a lower layer that reaches up into a higher one fails here.

    schemas  <  kernel (steplog/*.py)  <  projections  <  processors, producers  <  server

`schemas` imports nothing of ours; the kernel (errors, settings, Kafka clients and topics)
only schemas; each layer above it what is below it, and the outer ring (`steplog/server/`:
CLI, stack, web service, SQL endpoint, replay, demo, broker) anything. processors and producers
stand side by side and do not import each other. `steplog/__init__.py`, the public face
(`steplog.Client`, `steplog.App`, ...), re-exports the SDK lazily; nothing of ours imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each layer's files are, and the import prefix they have once installed.
LAYER_DIRS = {
    "schemas": ROOT / "schemas",
    "projections": ROOT / "projections",
    "processors": ROOT / "processors",
    "producers": ROOT / "producers",
    "server": ROOT / "steplog" / "server",
}
ALLOWED = {
    "schemas": {"schemas"},
    "kernel": {"schemas", "kernel"},
    "projections": {"schemas", "kernel", "projections"},
    "processors": {"schemas", "kernel", "projections", "processors"},
    "producers": {"schemas", "kernel", "projections", "producers"},
    "server": {"schemas", "kernel", "projections", "processors", "producers", "server"},
    "public": {"schemas", "kernel", "projections", "processors", "producers"},
}
PUBLIC_FACES = (ROOT / "steplog" / "__init__.py", ROOT / "steplog" / "testing.py")
"""`import steplog` and `steplog.testing` (the SDK's test harness): the SDK's public faces."""


def layer_of_module(module: str) -> str | None:
    """The layer of an absolute module name of ours ('steplog.schemas.events'), or None."""
    parts = module.split(".")
    if parts[0] != "steplog":
        return None
    if len(parts) == 1 or parts[1:] == ["testing"]:
        return "public"
    if parts[1] in LAYER_DIRS:
        return parts[1]
    return "kernel"


def layer_of_file(path: Path) -> str:
    if path in PUBLIC_FACES:
        return "public"
    for layer, directory in LAYER_DIRS.items():
        if directory in path.parents:
            return layer
    return "kernel"


def package_of(path: Path) -> str:
    """The installed package of a file ('steplog.processors' for processors/fold.py)."""
    for layer, directory in LAYER_DIRS.items():
        if directory in path.parents:
            relative = path.parent.relative_to(directory).parts
            base = "steplog.server" if layer == "server" else f"steplog.{layer}"
            return ".".join((base, *relative))
    return ".".join(("steplog", *path.parent.relative_to(ROOT / "steplog").parts))


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = package_of(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "steplog":
                # `from steplog import kafka` names a kernel module; `from steplog import
                # Client`, the public face.
                found += [(node.lineno, f"steplog.{alias.name}"
                           if (ROOT / "steplog" / f"{alias.name}.py").exists() else "steplog")
                          for alias in node.names]
                continue
            found.append((node.lineno, module))
    return found


def package_files() -> list[Path]:
    files = [p for d in ("schemas", "projections", "processors", "producers", "steplog")
             for p in (ROOT / d).rglob("*.py")]
    return sorted(files)


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for path in package_files():
        layer = layer_of_file(path)
        for line, module in imports_of(path):
            target = layer_of_module(module)
            if target is not None and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module} "
                             f"({target})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module, absent", [
    ("steplog.schemas.events", ("aiokafka", "faust", "clickhouse_connect")),
    ("steplog", ("aiokafka", "faust", "clickhouse_connect")),
    ("steplog.producers.client", ("faust", "clickhouse_connect", "typer", "aiohttp")),
])
def test_importing_a_lower_layer_loads_nothing_above_it(module: str, absent: tuple[str, ...]) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert not [name for name in absent if name in loaded]
