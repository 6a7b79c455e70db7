"""The SDK: what services import to send step events.

- `client`: `Client` (runs, record_step, flush/close, the send-failure policy).
- `run`: `Run` (`step`, `skip`, `complete`) and `StepScope`, the `with run.step(key):` form.
- `metadata`: limits and redaction of step metadata (a pure function).
- `event_bytes`: the hand-written encoder of step events, the hot path of `run.step`.
- `sink`: `EventSink`, what the client sends through, and `MemorySink` for tests.
- `sender`: `EventSender`, batching events to Kafka from a background thread.
- `flows_file`: `.steplog/flows.json` (load_flows_file) and pushing it (push_flows).
- `control`: `ControlSender`, the client's acknowledged sends (signals, starts, cancels).
- `run_results`: `RunHandle` (what `client.start` returns: `result()`), and `RunEndTail`, the
  one consumer per client that finds runs' ends.
- `app`, `worker`, `context`, `history`, `run_log`: durable workflows (docs/workflows.md).
"""
