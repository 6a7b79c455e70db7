"""Sessions (`session_id`): one engine connection kept between the requests that name it.

ClickHouse's HTTP sessions (src/Server/HTTPHandler.cpp, src/Interpreters/Session.cpp), as
clients use them for temporary tables and `SET`/`USE` that outlive one request:
- a session belongs to the key that opened it: the same `session_id` sent with another key is
  another session (ClickHouse keys sessions by user too), so no key reaches another's tables;
- it expires `session_timeout` seconds (default 60, at most 3600, else INVALID_SESSION_TIMEOUT)
  after its last request ended; each request may set a new timeout;
- one request at a time: a second request while one holds it is answered SESSION_IS_LOCKED
  (373), as ClickHouse answers, rather than queued;
- `session_check=1` answers SESSION_NOT_FOUND (372) instead of opening a new one;
  `close_session=1` closes it when the request ends.

The registry only decides who holds which session; what runs in it, and how a request's own
settings are undone afterwards, is sql_execution's. Expired sessions are closed when the
registry is next used (each close is one chDB connection closing: immediate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from steplog.server.sql_auth import Access
from steplog.server.sql_engine import EngineSession
from steplog.server.sql_errors import SqlError

__all__ = ["HeldSession", "SessionSpec", "SqlSessions"]

DEFAULT_TIMEOUT_S: Final = 60  # ClickHouse's default_session_timeout
MAX_TIMEOUT_S: Final = 3600  # ClickHouse's max_session_timeout
MAX_SESSIONS: Final = 256
"""Sessions open at once: each holds an engine connection, its settings and temporary tables."""
_TRUE: Final = ("1", "true")


@dataclass(frozen=True)
class SessionSpec:
    """What a request asks of its session (`session_id`, `session_timeout`, ...)."""

    session_id: str
    timeout_s: int = DEFAULT_TIMEOUT_S
    check: bool = False
    close: bool = False

    @classmethod
    def read(cls, params: Mapping[str, str]) -> SessionSpec | None:
        """The request's session, None when it names none (an empty `session_id` is none)."""
        session_id = params.get("session_id", "")
        if not session_id:
            return None
        if len(session_id) > 256 or not session_id.isprintable():
            raise SqlError(36, "BAD_ARGUMENTS",
                           "session_id must be 1 to 256 printable characters")
        sent = params.get("session_timeout")
        timeout = DEFAULT_TIMEOUT_S
        if sent is not None:
            if not sent.strip().isdigit():
                raise SqlError(374, "INVALID_SESSION_TIMEOUT",
                               f"Invalid session timeout: {sent[:20]!r}")
            timeout = int(sent)
            if timeout > MAX_TIMEOUT_S:
                raise SqlError(374, "INVALID_SESSION_TIMEOUT",
                               f"Session timeout {timeout} is larger than max_session_timeout: "
                               f"{MAX_TIMEOUT_S}")
        return cls(session_id, timeout, params.get("session_check", "0").lower() in _TRUE,
                   params.get("close_session", "0").lower() in _TRUE)


class HeldSession:
    """One session, used by one request at a time (the registry sees to that)."""

    def __init__(self, owner: str, session_id: str, access: Access) -> None:
        self.owner = owner
        self.session_id = session_id
        self.access = access
        """The access of the request that opened it: a reader's engine session runs with
        readonly=2 (temporary tables and settings, no writes) for all its life."""
        self.engine: EngineSession | None = None
        """Opened by the first request that runs in it (on its worker thread)."""
        self.database: str | None = None
        """Its current database: the first request's, then what `USE` chose."""
        self.broken = False
        """Set when a request could not undo its settings: the session closes at release."""
        self.timeout_s: float = DEFAULT_TIMEOUT_S
        self.expires = 0.0

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class SqlSessions:
    """Thread-safe: acquired and released from the event loop, used on worker threads."""

    def __init__(self, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], HeldSession] = {}
        self._busy: set[tuple[str, str]] = set()

    def acquire(self, owner: str, spec: SessionSpec, access: Access) -> HeldSession:
        """The session `spec` names for the key `owner`, held until `release`; opened if it
        does not exist. SqlError when it is held by another request, or not found with
        session_check, or too many are open."""
        with self._lock:
            expired = self._expired()
            key = (owner, spec.session_id)
            held = self._sessions.get(key)
            if held is None:
                if spec.check:
                    raise SqlError(372, "SESSION_NOT_FOUND",
                                   f"Session {spec.session_id} not found")
                if len(self._sessions) >= self.limit:
                    raise SqlError(202, "TOO_MANY_SIMULTANEOUS_QUERIES",
                                   f"Too many open sessions: {self.limit}; close some "
                                   "(close_session=1) or let them expire")
                held = HeldSession(owner, spec.session_id, access)
                self._sessions[key] = held
            elif key in self._busy:
                raise SqlError(373, "SESSION_IS_LOCKED",
                               f"Session {spec.session_id} is locked by a concurrent client")
            self._busy.add(key)
            held.timeout_s = spec.timeout_s
        for session in expired:
            session.close()
        return held

    def release(self, held: HeldSession, *, close: bool = False) -> None:
        """The request holding `held` has ended; the session expires `timeout` from now."""
        key = (held.owner, held.session_id)
        with self._lock:
            self._busy.discard(key)
            held.expires = self._clock() + held.timeout_s
            gone = close or held.broken or held.timeout_s == 0
            if gone and self._sessions.get(key) is held:
                del self._sessions[key]
        if gone:
            held.close()

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._busy.clear()
        for session in sessions:
            session.close()

    def _expired(self) -> list[HeldSession]:
        """Remove (under the lock) the sessions past their expiry that nobody holds."""
        now = self._clock()
        gone = [key for key, held in self._sessions.items()
                if key not in self._busy and held.expires and held.expires <= now]
        return [self._sessions.pop(key) for key in gone]
