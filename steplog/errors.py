"""The errors Steplog raises on purpose.

Every message names what was wrong, where (a field, a variable, a path, a process) and what was
expected, so that the reader can act on it without opening the source.
"""

from __future__ import annotations


class SteplogError(Exception):
    """Base of every error Steplog raises deliberately."""


class SettingsError(SteplogError):
    """A STEPLOG_* variable (or settings argument) has a value that cannot be used."""


class InvalidEventError(SteplogError):
    """Bytes or a mapping that are not a valid Steplog event, command or signal.

    `field` is the dotted path of the offending field ("payload.output", "schema_version"),
    or "" when the problem is the whole message (undecodable bytes, oversized).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class EventTooLargeError(InvalidEventError):
    """An event whose encoded size is over the configured limit."""


class BrokerError(SteplogError):
    """The local Kafka broker could not be installed, started, reached or stopped."""


class TopicError(SteplogError):
    """A topic is missing or exists with a shape (partitions, configs) other than the settings'."""


class ClickHouseError(SteplogError):
    """The ClickHouse engine or server could not be opened or migrated."""


class ClickHousePathLockedError(ClickHouseError):
    """An embedded chDB path is already owned by another process."""


class SendError(SteplogError):
    """Events could not be delivered to Kafka (raised only with throw_on_send_error=True)."""


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
