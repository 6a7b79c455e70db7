"""Steplog's wire vocabulary: event, signal and command models, statuses, topic names.

Depends on nothing else of Steplog's (but the error hierarchy), so other languages' SDKs and
every layer can share it.

- `statuses`: RunStatus, StepStatus, parse_step_status (ours and the seed SDKs' words).
- `limits`: every field's range and shape (from the ClickHouse column that stores it), declared
  once: the field types (Name, Timestamp, Attempt, JsonValue with finite numbers, ...).
- `base`: the strict WireModel base, ErrorInfo, TriggerInfo; re-exports the common field types.
- `events`: run and step events on the events topic; `Event` is their discriminated union.
- `signals`: the signals topic: `Signal` and the wait / trigger bookkeeping of its name
  (`WaitRegistered`, `WaitEnded`, `TriggerRegistered`); `SignalsMessage`; wait matching.
- `commands`: start / resume / cancel instructions for workers, with the run's history; `Command`.
- `flows`: the flows topic: `FlowDefinition`, `WorkflowDefinition` (with its `RetryPolicy`);
  `FlowsMessage`.
- `ids`: deterministic ids (`derived_id`) that make duplicate writes collapse.
- `dead_letters`: `DeadLetter`, an unusable message kept with the reason.
- `codec`: bytes <-> models (encode, decode_*, validate_*), with one clear error per message.
- `golden`, `export`: golden examples and JSON Schemas, written to `examples/` and `json/`.
- `topics`: topic names and their keys.

What may change in a minor version and what needs a major, and the order to upgrade writers
and readers in: `COMPATIBILITY.md` in this folder (readers ignore unknown fields; another major
`schema_version` is refused with the reason).

Nothing is re-exported here on purpose: `steplog.settings` imports `topics`, and keeping this
module empty keeps that import from pulling in pydantic models (and any import cycle with them).
"""
