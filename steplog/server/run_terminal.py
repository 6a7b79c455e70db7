"""Runs in the terminal, for people who live there: `steplog runs list` as a table and
`steplog runs show RUN_ID` as seed 002's timeline (a glyph, the step's name, its duration, its
return value and error beneath), every attempt of a retried step on a line of its own.

Plain text with a glyph and the status's name side by side, so it reads without colour and
survives a pipe into a file or a ticket.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Final

from pydantic import JsonValue
from rich.console import Console
from rich.table import Table
from rich.text import Text

from steplog.projections.read_models import ErrorView, RunDetail, RunPage, StepView

__all__ = ["GLYPHS", "duration_text", "render_run", "render_run_list"]

GLYPHS: Final = {
    "completed": "✓",
    "failed": "✗",
    "running": "⟳",
    "retrying": "⟳",
    "skipped": "↷",
    "missing": "?",
    "stuck": "⚠",
    "interrupted": "⏸",
    "cancelled": "⊘",
    "expired": "⌛",
    "scheduled": "◷",
    "overdue": "◷",
    "sleeping": "◷",
    "waiting": "◷",
}
_JSON_LINES: Final = 12
"""Lines of a return value or input shown under a step; the dashboard shows them whole."""
_STACK_LINES: Final = 8
_WIDTH: Final = 120


def glyph(status: str) -> str:
    return GLYPHS.get(status, "·")


def duration_text(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms / 1000, 60)
    if minutes < 60:
        return f"{minutes:.0f}m{seconds:02.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:.0f}h{minutes:02.0f}m"


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at is not None else "-"


def render_run_list(page: RunPage) -> str:
    table = Table(show_lines=False, box=None, pad_edge=False)
    for column in ("", "status", "run", "flow", "trigger", "created (UTC)", "duration"):
        table.add_column(Text(column))
    for run in page.runs:
        table.add_row(
            Text(glyph(run.status)), Text(run.status), Text(run.run_id), Text(run.flow),
            Text(run.trigger_event or "-"), Text(_when(run.created_at)),
            Text(duration_text(run.duration_ms)),
        )
    counts = ", ".join(f"{status} {count}" for status, count in sorted(page.counts.items()))
    lines = [_print(table), f"{len(page.runs)} run(s) shown; by status: {counts or 'none'}"]
    if page.next_cursor is not None:
        lines.append(f"older runs: --cursor {page.next_cursor}")
    return "\n".join(lines)


def render_run(detail: RunDetail) -> str:
    run = detail.run
    out = [
        f"{glyph(run.status)} run {run.run_id}  {run.status}",
        f"  flow {run.flow} (project {run.project}"
        + (f", app {run.app})" if run.app else ", instrumented)"),
        f"  created {_when(run.created_at)}  started {_when(run.started_at)}  "
        f"finished {_when(run.finished_at)}  duration {duration_text(run.duration_ms)}",
    ]
    if run.trigger_event:
        out.append(f"  trigger {run.trigger_event} ({run.trigger_event_id})")
    links = [("parent", [detail.parent] if detail.parent else []),
             ("retrigger of", [detail.retrigger_of] if detail.retrigger_of else []),
             ("children", detail.children), ("retriggered as", detail.retriggers)]
    for label, runs in links:
        if runs:
            out.append(f"  {label}: " + ", ".join(f"{r.run_id} ({r.status})" for r in runs))
    if detail.error is not None:
        out.extend(_error_lines(detail.error, "  "))
    out.append("")
    for step in detail.steps:
        out.extend(_step_lines(step))
    if detail.output is not None:
        out.append("")
        out.append("output:")
        out.extend(_json_lines(detail.output, "  "))
    return "\n".join(out)


def _step_lines(step: StepView) -> list[str]:
    tries = f"  ({len(step.attempts)} attempts)" if len(step.attempts) > 1 else ""
    lines = [f"{glyph(step.status)} {step.name:<40} {duration_text(step.duration_ms):>9}  "
             f"{step.status}  [{step.kind}]{tries}"]
    if len(step.attempts) > 1:
        for attempt in step.attempts:
            lines.append(f"    attempt {attempt.attempt}: {glyph(attempt.status)} "
                         f"{attempt.status} {duration_text(attempt.duration_ms)}"
                         + (f"  {attempt.error.type}: {attempt.error.message}"
                            if attempt.error else ""))
    if step.output is not None:
        lines.extend(_json_lines(step.output, "    "))
    if step.error is not None:
        lines.extend(_error_lines(step.error, "    "))
    return lines


def _error_lines(error: ErrorView, indent: str) -> list[str]:
    lines = [f"{indent}{error.type}: {error.message}"]
    if error.stack:
        stack = error.stack.rstrip("\n").splitlines()
        lines.extend(f"{indent}  {line}" for line in stack[-_STACK_LINES:])
    return lines


def _json_lines(value: JsonValue, indent: str) -> list[str]:
    lines = json.dumps(value, indent=2, ensure_ascii=False).splitlines()
    shown = [f"{indent}{line}" for line in lines[:_JSON_LINES]]
    if len(lines) > _JSON_LINES:
        shown.append(f"{indent}... ({len(lines) - _JSON_LINES} more lines)")
    return shown


def _print(table: Table) -> str:
    shown = io.StringIO()
    Console(file=shown, width=_WIDTH, force_terminal=False).print(table)
    return shown.getvalue().rstrip("\n")
