"""The errors Steplog raises on purpose.

Every message names what was wrong, where (a field, a variable, a path, a process) and what was
expected, so that the reader can act on it without opening the source.
"""

from __future__ import annotations

# The root and the wire format's errors live in the lowest layer, which raises them; they are
# re-exported here with the rest of the hierarchy.
from steplog.schemas.errors import EventTooLargeError as EventTooLargeError
from steplog.schemas.errors import InvalidEventError as InvalidEventError
from steplog.schemas.errors import SteplogError as SteplogError


class SettingsError(SteplogError):
    """A STEPLOG_* variable (or settings argument) has a value that cannot be used."""


class BrokerError(SteplogError):
    """The local Kafka broker could not be installed, started, reached or stopped."""


class TopicError(SteplogError):
    """A topic is missing or exists with a shape (partitions, configs) other than the settings'."""


class ClickHouseError(SteplogError):
    """The ClickHouse engine or server could not be opened or migrated."""


class ClickHousePathLockedError(ClickHouseError):
    """An embedded chDB path is already owned by another process."""


class StoreProcessGoneError(ClickHouseError):
    """The process that owns the embedded engine exited: no write can succeed again, so the
    processors stop rather than retry."""


class SendError(SteplogError):
    """Events could not be delivered to Kafka (raised only with throw_on_send_error=True)."""


class DeliveryFailing(SendError):
    """Delivery to Kafka stopped working (broker unreachable, partitions without a leader):
    events wait in the bounded buffer and are retried with backoff. Passed to `on_error` once
    per outage, when it starts; raised once with throw_on_send_error.

    `cause` is the failure that started it; `buffered` the events waiting at that moment.
    """

    def __init__(self, topic: str, cause: BaseException, buffered: int) -> None:
        self.topic = topic
        self.cause = cause
        self.buffered = buffered
        super().__init__(
            f"delivery to topic {topic!r} is failing ({type(cause).__name__}: {cause}); "
            f"{buffered} events are buffered and retried with backoff until Kafka answers"
        )


class DeliveryRecovered(SendError):
    """Delivery to Kafka works again after a DeliveryFailing: passed to `on_error` once per
    outage, when it ends. Never raised (nothing failed by recovering).

    `duration_s` is how long delivery failed; `dropped` and `failed` count the events lost
    meanwhile (the oldest dropped from a full buffer; refused by Kafka for good).
    """

    def __init__(self, topic: str, duration_s: float, dropped: int, failed: int) -> None:
        self.topic = topic
        self.duration_s = duration_s
        self.dropped = dropped
        self.failed = failed
        super().__init__(
            f"delivery to topic {topic!r} recovered after {duration_s:.1f} s of failing; "
            f"{dropped} events dropped from the full buffer and {failed} refused meanwhile"
        )


class SpoolError(SendError):
    """The SDK's spool dir cannot be used (STEPLOG_SPOOL_DIR, Client(spool_dir=...))."""


class SpoolLockedError(SpoolError):
    """The spool dir is in use by another process (or another client of this one)."""


class MetadataError(SteplogError):
    """Step metadata that cannot be sent: too many keys, a key or value too long, a value that
    is not a flat scalar. Raised where the step is called, before the step's code runs.

    `key` is the offending metadata key, or "" when the problem is the whole mapping.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"metadata[{key!r}]: {problem}" if key else f"metadata: {problem}")


class FlowsFileError(SteplogError):
    """A `.steplog/flows.json` that cannot be used; the message names the file, the line and
    the field path (e.g. `flows[0].steps[2].sdk_step_key`)."""

    def __init__(self, path: str, line: int | None, field: str, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


# --- durable workflows ----------------------------------------------------------------------


class WorkflowError(SteplogError):
    """Base of the errors of durable workflows: how a workflow is declared, or how a run of it
    went (a step that failed for good, a pass that does not replay its history)."""


class NonRetriableError(WorkflowError):
    """Raise it in a step's function to fail the step at once, without further attempts.

        if response.status == 402:
            raise steplog.NonRetriableError("card declined")

    The step is recorded failed for good (`step.failed` with `non_retriable`), and the
    workflow code sees a StepFailedError it may handle.
    """


class StepFailedError(WorkflowError):
    """Raised in workflow code by a step that failed for good: its last attempt failed, or it
    raised NonRetriableError. Catch it to recover; left uncaught, the run fails with it.

    `error_type` and `error_message` are those of the step's last error (e.g. "TimeoutError").
    """

    def __init__(
        self,
        step_key: str,
        error_type: str,
        error_message: str,
        *,
        attempt: int = 1,
        message: str | None = None,
    ) -> None:
        self.step_key = step_key
        self.error_type = error_type
        self.error_message = error_message
        self.attempt = attempt
        super().__init__(
            message
            or f"step {step_key!r} failed for good (attempt {attempt}): "
            f"{error_type}: {error_message}"
        )


class ChildRunFailedError(StepFailedError):
    """Raised in the parent's code by `ctx.step.run_workflow` when the child run failed."""

    def __init__(
        self, step_key: str, child_run_id: str, error_type: str, error_message: str
    ) -> None:
        self.child_run_id = child_run_id
        super().__init__(
            step_key,
            error_type,
            error_message,
            message=f"step {step_key!r}: child run {child_run_id} failed: "
            f"{error_type}: {error_message}",
        )


class NonDeterminismError(WorkflowError):
    """A pass of a run asked for steps its history does not have where it has others: the
    workflow's code changed under a run in flight, or depends on something outside its steps
    (the clock, randomness, a read). The run fails with it; it cannot be caught for good."""


class ExpressionError(WorkflowError, ValueError):
    """A condition (`wait_for_event(..., if_=...)`) that cannot be compiled: not CEL, too
    long, or using a name it is not given; the message names the argument and the text."""


class StepOutputError(WorkflowError):
    """A step's (or a run's) result cannot be stored: it is not JSON, or it is too large. The
    step fails without further attempts (the same code would return the same value)."""


class StepInputError(WorkflowError, ValueError):
    """A step's recorded input cannot be stored (not JSON, or too large); raised at the call,
    before anything is written."""


class InvalidDurationError(WorkflowError, ValueError):
    """A duration ("10s", "5m", 250) or a point in time that cannot be read."""


class WorkflowNotFoundError(WorkflowError):
    """A command names a workflow the app does not define."""


class RunNotFoundError(SteplogError):
    """No run with the id is known (in `runs_current`)."""


class StateSpillError(SteplogError):
    """States could not be moved out of memory to the scratch file (a full disk, say): they
    stay in memory, nothing is lost."""


class ReplayError(SteplogError):
    """A replay could not rebuild the projections (nothing was swapped in)."""


# --- a run's result, awaited by the caller (producers.run_results) --------------------------


class RunFailedError(WorkflowError):
    """Raised by `handle.result()` for a run that failed: an exception escaped its function
    (a step out of attempts, a non-retriable error, a failed child, a bug).

    `error_type` and `error_message` are those of the run's `run.failed` (for a failed step
    left uncaught: "StepFailedError" and the step's message); `error_stack` when the worker
    captured one.
    """

    def __init__(
        self,
        run_id: str,
        workflow: str,
        error_type: str,
        error_message: str,
        error_stack: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.error_type = error_type
        self.error_message = error_message
        self.error_stack = error_stack
        super().__init__(
            f"run {run_id} of workflow {workflow!r} failed: {error_type}: {error_message}"
        )


class RunCancelledError(WorkflowError):
    """Raised by `handle.result()` for a run that was cancelled (`client.cancel`, `steplog
    runs cancel`, or its parent's end); `reason` is the one recorded, if any."""

    def __init__(self, run_id: str, workflow: str, reason: str | None) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.reason = reason
        because = f": {reason}" if reason else " (no reason recorded)"
        super().__init__(f"run {run_id} of workflow {workflow!r} was cancelled{because}")


class RunExpiredError(RunCancelledError):
    """Raised by `handle.result()` for a run that ended `expired`: a start (a cron tick,
    `start_at`, a `sleep_until` wake-up) overdue by more than its `expires_after`. A
    RunCancelledError too: it never ran, or stopped, as a cancelled run does."""

    def __init__(self, run_id: str, workflow: str, reason: str | None) -> None:
        super().__init__(run_id, workflow, reason)
        because = f": {reason}" if reason else ""
        self.args = (f"run {run_id} of workflow {workflow!r} expired{because}",)


class ResultTimeoutError(WorkflowError, TimeoutError):
    """Raised by `handle.result(timeout=...)` when the run has not ended in time. The run goes
    on; ask again later. Also a TimeoutError, so `except TimeoutError` catches it."""

    def __init__(self, run_id: str, workflow: str | None, timeout: float) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.timeout = timeout
        of = f" of workflow {workflow!r}" if workflow else ""
        super().__init__(
            f"run {run_id}{of} has not ended within {timeout:g}s (it may still be running; "
            "wait again, or look it up in runs_current)"
        )
