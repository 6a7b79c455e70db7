"""Stream processors: the pure fold of events into run and step state, and its hosts.

`fold/` is the pure part (no I/O, no clock, no randomness): the whole state machine of a run.

- `fold/run.py`: `apply_event(state, event, flow) -> (state, effects)` and `fold_events`; its
  docstring is the state machine (step precedence, run status, missing steps, deadlines), and
  it folds the run events; `fold/steps.py` folds the step events (precedence, status,
  deadlines, missing steps); `fold/workflow.py` decides the engine effects of a workflow
  run's event, the timers a run wants and the history a `resume_run` carries.
- `fold/transition.py`: what one new event changed (a step's winner before and after, a run's
  first start or end, newly missing steps, the timers wanted before and after), handed to the
  rows and the engine effects: the fold is one pass per event.
- `fold/run_rows.py`: the rows a state projects (`take_rows`, `current_rows`);
  `fold/rows.py`: `RunRow` and `StepRow`, one field per column of the `runs` and `steps`
  tables; `fold/graph.py`: a flow definition as the fold reads it.
- `fold/state.py`: `RunState`, what the fold remembers about one run, and its stored form
  (`to_bytes` / `from_bytes`, checked against `STATE_FORMAT`).
- `fold/effects.py`: what the fold asks its host to do: rows (`RunRowChanged`,
  `StepRowChanged`) and engine effects (`SendCommand`, `SetTimer`, `ClearTimer`, `WriteEvent`,
  `WriteSignalsMessage`, `EndParentStep`, `WorkflowRunEnded`); `latest_rows` keeps the last
  row per key.
- `fold/timers.py`: the timer heap, and what a due timer writes; `fold/schedules.py`: what a
  scheduled start writes (cron ticks and their chain, missed ticks, `expires_after`);
  `fold/signals.py`: each event
  name's waits and triggers, and what a signals message does to them; `fold/flow_control.py`:
  each flow-control key's held-back starts, and which go when.
- `fold/state_retention.py`: when an ended run leaves the state, on the log's time.

The hosts carry it, one job per module: `app` (the faust app hosting the tasks), `config`
(`ProcessorConfig`), `stateful_consumer` (the events' and signals' consumers: batches, commits,
rebalances), `fold_host` (a batch of events: decode, fold, carry out, keep), `signals_host`
(a batch of signals), `flow_control_host` (a batch of the flow-control topic, and its keys'
ticks), `flow_gate` (which starts flow control holds back), `definitions` (every process follows the flows topic) and `flows_host`
(what is done with it), `timer_service` (the timers task), `batch_fold` (one batch of events
decoded and folded, rows included: the processors' and replay's alike), `projection_batch`
(effects into inserts), `projection_writes` (inserts retried, refused rows dead-lettered),
`dead_letters`, `dispatch` (sending engine effects and waiting for Kafka's
acknowledgements), `record_checks` (signed records: who may write a project),
`run_retention` (events for runs that left the state: `run closed`), `batch_metrics` (a
batch's counts for the Prometheus metrics), `registry` (which apps define which workflows), `state_store` (run and name
states and their changelogs), `held_states` and `cold_states` (states in memory up to a
budget, the rest on disk), `membership` (static group membership), `write_health`.

Folding a run's events in any order, with any re-deliveries, gives the same state and the same
last row per key: that is what makes live processing and replay from offset 0 agree.

Nothing is re-exported here, so that importing one module does not pull in the others (the
app imports faust; the fold must stay importable without it).
"""
