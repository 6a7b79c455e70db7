"""The SDK: what services import to send step events.

- `client`: `Client` (runs, record_step, flush/close, the send-failure policy).
- `run`: `Run` (`step`, `skip`, `complete`) and `StepScope`, the `with run.step(key):` form.
- `metadata`: limits and redaction of step metadata (a pure function).
- `event_bytes`: the hand-written encoder of step events, the hot path of `run.step`.
- `sink`: `EventSink`, what the client sends through, and `MemorySink` for tests.
- `sender`: `EventSender`, batching events to Kafka from a background thread; its chunks go
  out by partition as record batches (`record_batches`), under a watchdog that discards a
  producer cut off from the cluster (`producer_watch`).
- `flows_file`: `.steplog/flows.json` (load_flows_file) and pushing it (push_flows).
- `control`: `ControlSender`, the client's acknowledged sends (signals, starts, cancels).
- `run_results`: `RunHandle` (what `client.start` returns: `result()`), and `RunEndTail`, the
  one consumer per client that finds runs' ends.
- durable workflows (docs/workflows.md): `app` (App) and `workflow` (a workflow as served);
  `context` (`ctx.step.*`); a pass of a run: `run_pass` (its lifecycle), `pass_branches`
  (parking and settling), `run_journal` (memoized steps, determinism), `pass_writes` (its
  events), `step_run` and `parking_steps` (the step kinds), `json_values`; the worker:
  `worker` (lifecycle), `command_intake` (consuming), `run_executor` (starts, resumes,
  cancels), `command_commits` (offsets and their commit protocol), `kafka_run_sink`,
  `recent_runs`; `history` and `run_log` (a run's history from the log); `patches`
  (`ctx.patched`: versioning with runs in flight).
- testing users' workflows: `testing` (`WorkflowTest`: runs in-process on the worker's own
  passes; users import it as `steplog.testing`, with its pytest fixture), `memory_run_log`
  (where their passes write).
"""
