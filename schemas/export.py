"""Write the published contract: JSON Schema files and golden examples.

    python -m steplog.schemas.export           # (re)write json/, examples/, examples/next/
    python -m steplog.schemas.export --check   # exit 1 listing drifted files, write nothing

The files are generated, never edited by hand: the models are the source of truth, and the
files are how SDKs in other languages (and reviewers of a schema change) see them. Output is
deterministic (sorted keys in schemas, fixed ids and timestamps in examples), so a diff in these
files is always a schema change.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .base import SCHEMA_VERSION, WireModel
from .codec import encode
from .commands import Command
from .dead_letters import DeadLetter
from .events import Event
from .flows import FlowDefinition, FlowsMessage
from .golden import golden_flows_messages, golden_messages, next_minor_document
from .signals import Signal, SignalsMessage

PACKAGE_DIR = Path(__file__).resolve().parent
"""Where the committed files live: the `schemas/` folder (package data in a wheel)."""

_OUTPUT_DIRS = ("json", "examples", "examples/next")
_EXPORT_COMMAND = "python -m steplog.schemas.export"

# One schema per topic (what a consumer of it must read), and the single models that callers
# of decode_signal / decode_flow still read alone.
_SCHEMAS: dict[str, tuple[str, Any]] = {
    "event": ("Steplog event", Event),
    "signal": ("Steplog signal", Signal),
    "signals_message": ("Steplog signals-topic message", SignalsMessage),
    "command": ("Steplog command", Command),
    "dead_letter": ("Steplog dead letter", DeadLetter),
    "flow": ("Steplog flow definition", FlowDefinition),
    "flows_message": ("Steplog flows-topic message", FlowsMessage),
}


def render_schema(name: str) -> str:
    """The JSON Schema file `json/<name>.schema.json`, as text."""
    title, message_type = _SCHEMAS[name]
    schema = TypeAdapter(message_type).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:steplog:schema:v{SCHEMA_VERSION}:{name}"
    schema["title"] = f"{title} (schema version {SCHEMA_VERSION})"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render_files() -> dict[str, str]:
    """Every generated file, by its path relative to the package directory."""
    files = {f"json/{name}.schema.json": render_schema(name) for name in _SCHEMAS}
    messages: dict[str, WireModel] = {**golden_messages(), **golden_flows_messages()}
    for type_tag, message in messages.items():
        # Field order, not sorted keys: an example reads like the envelope it illustrates.
        value = json.loads(encode(message))
        files[f"examples/{type_tag}.json"] = _example(value)
        files[f"examples/next/{type_tag}.json"] = _example(next_minor_document(message))
    return files


def _example(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def find_drift(root: Path = PACKAGE_DIR) -> list[str]:
    """Files under `root` that differ from what the models generate: changed, missing, stale."""
    expected = render_files()
    drifted = [
        relative
        for relative, text in expected.items()
        if _read(root / relative) != text
    ]
    drifted += [relative for relative in _existing(root) if relative not in expected]
    return sorted(drifted)


def write_files(root: Path = PACKAGE_DIR) -> list[str]:
    """Write every generated file under `root`; return those that changed (or were removed)."""
    expected = render_files()
    changed = []
    for relative, text in expected.items():
        path = root / relative
        if _read(path) != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(relative)
    # The output folders hold generated files only, so a file no longer generated (a renamed
    # or removed type) is stale and would mislead the SDKs that test against it.
    for relative in _existing(root):
        if relative not in expected:
            (root / relative).unlink()
            changed.append(relative)
    return sorted(changed)


def _existing(root: Path) -> list[str]:
    return [
        path.relative_to(root).as_posix()
        for folder in _OUTPUT_DIRS
        for path in sorted((root / folder).glob("*.json"))
    ]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def main(argv: Sequence[str] | None = None, root: Path = PACKAGE_DIR) -> int:
    parser = argparse.ArgumentParser(
        prog=_EXPORT_COMMAND, description="Write Steplog's JSON Schemas and golden examples."
    )
    parser.add_argument(
        "--check", action="store_true", help="list drifted files and exit 1; write nothing"
    )
    args = parser.parse_args(argv)
    if args.check:
        drifted = find_drift(root)
        if drifted:
            print(f"{len(drifted)} generated file(s) out of date under {root}:")
            for relative in drifted:
                print(f"  {relative}")
            print(f"run `{_EXPORT_COMMAND}` to regenerate them")
            return 1
        print("generated files are up to date")
        return 0
    changed = write_files(root)
    for relative in changed:
        print(f"updated {relative}")
    print(f"{len(changed)} file(s) changed under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
