"""States moved out of memory: a private SQLite file of (partition, key) → changelog bytes.

`held_states.HeldStates` keeps the states it was given most recently in memory and moves the
others here, so that the processors' memory stays flat however many runs they have seen (a
finished run's state is kept, without a retention forever: a late or duplicated event must
still fold onto it).

The file is scratch, never the truth: the changelog topic is (it is read back whenever a
partition is assigned). So it is SQLite's private temporary database (`connect("")`), which
SQLite creates in its temporary directory (`SQLITE_TMPDIR`, else `TMPDIR`, else /var/tmp or
/tmp), unlinks at once and which is gone when the connection closes or the process dies,
however it dies; and it needs no fsync (its rollback journal is kept in memory: a spill that
fails, on a full disk say, is undone, and the states stay in memory). The standard library's
sqlite3 was chosen over RocksDB bindings (what faust's tables use) because it installs nothing
and a lookup by primary key costs a few microseconds, which is all this needs: reads here
happen once per batch for a state that went cold, not per event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Iterator
from typing import Final

from steplog.errors import StateSpillError

__all__ = ["ColdStates"]

_PAGE_BYTES: Final = 16384
"""A run's state is about 1-3 KB: 16 KiB pages hold several (4 KiB ones would overflow)."""
_CACHE_KIB: Final = 16384
"""SQLite's page cache (memory, so counted in the processors' RSS): 16 MiB."""
_PAGE_ROWS: Final = 1000
"""Rows read per query by `items`, which pages by key rather than hold a statement open while
its caller works between rows."""


class ColdStates:
    """States by partition and key in a private temporary SQLite database (module docstring).

    One connection, used from one thread at a time (the event loop's, or replay's fold); it is
    opened on first use, so a store that never spills opens no file.
    """

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # check_same_thread off: the store is built in one thread and used in the event
            # loop's; it is never used by two threads at once.
            db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
            for pragma in (
                f"page_size={_PAGE_BYTES}",
                f"cache_size=-{_CACHE_KIB}",
                # Scratch (module docstring): nothing to make durable, and no need to zero
                # what is deleted (Debian's SQLite does by default). The journal stays, in
                # memory: without one a transaction that fails half-way (a full disk)
                # leaves the file malformed, and every state on it unreadable.
                "journal_mode=MEMORY",
                "synchronous=OFF",
                "locking_mode=EXCLUSIVE",
                "secure_delete=OFF",
            ):
                db.execute(f"PRAGMA {pragma}")
            db.execute(
                "CREATE TABLE states (partition INTEGER NOT NULL, key BLOB NOT NULL, "
                "value BLOB NOT NULL, PRIMARY KEY (partition, key)) WITHOUT ROWID"
            )
            self._db = db
        return self._db

    def put_many(self, partition: int, states: Iterable[tuple[bytes, bytes]]) -> None:
        """Store `states` of `partition`, replacing what is stored under the same keys.

        StateSpillError if SQLite cannot (a full disk, say): none is stored then, and the
        caller keeps them in memory."""
        try:
            self._in_one_transaction(
                "INSERT OR REPLACE INTO states (partition, key, value) VALUES (?, ?, ?)",
                ((partition, key, value) for key, value in states),
            )
        except sqlite3.Error as exc:
            raise StateSpillError(
                f"cannot move states to SQLite's temporary file (in SQLITE_TMPDIR or TMPDIR, "
                f"else /var/tmp or /tmp): {exc}; free space there, point TMPDIR elsewhere or "
                "raise STEPLOG_STATE_MEMORY_MB"
            ) from exc

    def _in_one_transaction(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        """`executemany` in one transaction (one page write per page touched, not per row),
        all or nothing."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # (SQLite rolls back by itself after some errors)
                db.execute("ROLLBACK")
            raise

    def read(self, partition: int, key: bytes) -> bytes | None:
        if self._db is None:  # nothing ever moved here: no query (the common case)
            return None
        row = self._db.execute(
            "SELECT value FROM states WHERE partition = ? AND key = ?", (partition, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def delete_many(self, partition: int, keys: Iterable[bytes]) -> None:
        if self._db is not None:
            self._in_one_transaction(
                "DELETE FROM states WHERE partition = ? AND key = ?", ((partition, k) for k in keys)
            )

    def count(self, partition: int) -> int:
        if self._db is None:
            return 0
        row = self._db.execute("SELECT count(*) FROM states WHERE partition = ?", (partition,))
        return int(row.fetchone()[0])

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """The states of `partition` in key order, read a page of rows at a time."""
        db = self._db
        if db is None:
            return
        after, above = b"", ">="  # the first page from the smallest key (b"" included)
        while True:
            rows = db.execute(
                f"SELECT key, value FROM states WHERE partition = ? AND key {above} ? "
                "ORDER BY key LIMIT ?", (partition, after, _PAGE_ROWS)
            ).fetchall()
            yield from rows
            if len(rows) < _PAGE_ROWS:
                return
            after, above = rows[-1][0], ">"

    def drop(self, partitions: Collection[int]) -> None:
        """Forget every state of `partitions`."""
        if self._db is not None:
            self._in_one_transaction("DELETE FROM states WHERE partition = ?",
                                     ((p,) for p in partitions))

    def close(self) -> None:
        """Close the database, which deletes it; a later use opens a new, empty one."""
        if self._db is not None:
            self._db.close()
            self._db = None
