"""Stream processors: the pure fold of events into run and step state, and its hosts.

The fold (pure: no I/O, no clock, no randomness; the whole state machine of a run):

- `fold`: `apply_event(state, event, flow) -> (state, effects)` and `fold_events`; its
  docstring is the state machine (step precedence, run status, missing steps, deadlines).
  `apply_event` takes ownership of the state it is handed and updates it in place.
- `state`: `RunState`, what the fold remembers about one run, and its stored form
  (`to_bytes` / `from_bytes`, checked against `STATE_FORMAT`).
- `effects`: what the fold asks its host to do: rows (`RunRowChanged`, `StepRowChanged`) and
  engine effects (`SendCommand`, `SetTimer`, `ClearTimer`, `WriteEvent`,
  `WriteSignalsMessage`, `EndParentStep`); `latest_rows` keeps the last row per key of a batch.
- `workflow`: which engine effects a workflow run's event asks for, the timers a run wants,
  and the history a `resume_run` carries.
- `rows`: `RunRow` and `StepRow`, one field per column of the `runs` and `steps` tables.

Also pure: `timers` (the timer heap, and what a due timer writes), `signals_agent` (triggers
and waits per event name), `registry` (which apps define which workflows).

The hosts live in their own modules and only call the pure ones: `host` (the app: the
fold's and the signals agent's batches, the timer service), `batch_fold` (one batch of events
decoded and folded, rows included: the processors' and replay's alike), `stateful_consumer`
(the fold's and the signals' consumers: batches, commits, rebalances), `state_store` (run and
name states and their changelogs), `held_states` and `cold_states` (states in memory up to a
budget, the rest on disk), `dispatch` (sending engine effects and waiting for Kafka's
acknowledgements), `projection_batch` (effects into inserts), and replay
(`steplog/server/replay.py`, rows only).

Folding a run's events in any order, with any re-deliveries, gives the same state and the same
last row per key: that is what makes live processing and replay from offset 0 agree.

Nothing is re-exported here, so that importing one module does not pull in the others (the
hosts import faust; the fold must stay importable without it).
"""
