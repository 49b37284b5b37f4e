"""A SQLite connection that runs each call on the event loop's own thread, for SQLAlchemy's
aiosqlite dialect (`create_async_engine(..., async_creator=...)`).

aiosqlite hops to a worker thread and back for every call, which costs more than the SQLite work
of Taskyard's statements (docs/performance.md, change 16). The price: while a statement runs the
loop waits, so a long one delays everything else. SQLite is the one-process laptop default;
PostgreSQL is the database for load.
"""

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any


class InlineCursor:
    """The part of aiosqlite's cursor that SQLAlchemy's adapter awaits."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> "InlineCursor":
        return self

    async def execute(self, sql: str, parameters: Any = ()) -> "InlineCursor":
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> "InlineCursor":
        self._cursor.executemany(sql, seq_of_parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    """The part of `aiosqlite.Connection` that SQLAlchemy's adapter and `DriverInsert` use (a call
    that nothing makes is left out)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # the adapter checks it before commit

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def executemany(self, sql: str, seq_of_parameters: Any) -> InlineCursor:
        return InlineCursor(self._conn.executemany(sql, seq_of_parameters))

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    @contextlib.contextmanager
    def unsynced(self) -> Iterator[None]:
        """A transaction begun and committed inside does not fsync (`synchronous=NORMAL`, WAL mode):
        its frames reach the disk with the next commit that syncs, as the WAL is written in order
        (db.unsynced). SQLite changes the setting only between transactions: one left open by an
        error is rolled back here, as its session would."""
        was = int(self._conn.execute("PRAGMA synchronous").fetchone()[0])
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                self._conn.rollback()
            self._conn.execute(f"PRAGMA synchronous={was}")

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close now (also SQLAlchemy's `do_terminate`); closing twice is a no-op."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level


def inline_creator(path: str, timeout: float):
    """`async_creator` for `create_async_engine`: a new inline connection to the file `path`."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: SQLAlchemy may close a connection from a finalizer elsewhere.
        return InlineConnection(sqlite3.connect(path, timeout=timeout, check_same_thread=False))

    return connect
