"""Stream processors: the pure fold of events into run and step state, and its faust hosts.

The fold (pure: no I/O, no clock, no randomness; the whole state machine of a run):

- `fold`: `apply_event(state, event, flow) -> (state, effects)` and `fold_events`; its
  docstring is the state machine (step precedence, run status, missing steps, deadlines).
  `apply_event` takes ownership of the state it is handed and updates it in place.
- `state`: `RunState`, what the fold remembers about one run, and its stored form
  (`to_bytes` / `from_bytes`, checked against `STATE_FORMAT`).
- `effects`: what the fold asks its host to do (`RunRowChanged`, `StepRowChanged`), and
  `latest_rows` to keep the last row per key of a batch.
- `rows`: `RunRow` and `StepRow`, one field per column of the `runs` and `steps` tables.

The hosts (the faust app, replay, and the batch that turns effects into inserts) live in their
own modules and only call the fold.

Folding a run's events in any order, with any re-deliveries, gives the same state and the same
last row per key: that is what makes live processing and replay from offset 0 agree.

Nothing is re-exported here, so that importing one module does not pull in the others (the
hosts import faust; the fold must stay importable without it).
"""
