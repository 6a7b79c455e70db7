"""Who this process is in the processors' consumer groups: its client id and, when it can
have one, its static group membership (`group.instance.id`, KIP-345).

Why static membership: a dynamic member that dies (SIGKILL, OOM) keeps its partitions until the
broker's session timeout expires, and its successor's join waits for that; a static member that
comes back under the same instance id takes its partitions back at once, without a rebalance.
The instance id must be unique among the live members of a group, and stable across restarts
of one deployment: it is derived from the host name and the data dir, and the data dir's member
lock (`claim_membership`) makes sure no second process on the same data dir uses it (that one
joins as a dynamic member instead: two live members with one instance id fence each other).

Why the client id carries the health port: `steplog status` reads the members of the group
(`describe_groups` gives each member's client id and host) and so finds every processors
process's health endpoint without being told where they are.

The stack claims it once per process (`claim_membership`) and hands it to the consumers in
`ProcessorConfig.membership`.
"""

from __future__ import annotations

import fcntl
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

__all__ = ["GroupMembership", "claim_membership", "client_id_for", "health_port_of"]

CLIENT_ID_PREFIX: Final = "steplog-processors"
_HEALTH_SUFFIX = re.compile(r"-health-(\d{1,5})$")
_LOCK_FILE: Final = "member.lock"


@dataclass(frozen=True)
class GroupMembership:
    client_id: str = CLIENT_ID_PREFIX
    instance_id: str | None = None
    """The static member id (None: a dynamic member)."""


def client_id_for(health_port: int) -> str:
    """The client id that tells `steplog status` where this process's health endpoint is."""
    return f"{CLIENT_ID_PREFIX}-health-{health_port}" if health_port else CLIENT_ID_PREFIX


def health_port_of(client_id: str) -> int | None:
    """The health port a member's client id names, or None (no endpoint, or not ours)."""
    found = _HEALTH_SUFFIX.search(client_id)
    return int(found.group(1)) if found and client_id.startswith(CLIENT_ID_PREFIX) else None


# Kept referenced: closing the file would release the lock while the process still uses the id.
_held: list[IO[str]] = []


def claim_membership(data_dir: Path, health_port: int) -> GroupMembership:
    """This process's membership: static when it is the only processors process on `data_dir`
    (the member lock is held until exit), dynamic otherwise."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / _LOCK_FILE, "a", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return GroupMembership(client_id_for(health_port), None)
    _held.append(handle)
    instance = f"{socket.gethostname()}:{data_dir.resolve()}"
    return GroupMembership(client_id_for(health_port), instance)

