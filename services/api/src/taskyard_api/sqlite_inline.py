"""A SQLite connection that runs each call on the event loop's own thread, for SQLAlchemy's
aiosqlite dialect (`create_async_engine(..., async_creator=...)`).

aiosqlite hops to a worker thread and back for every call, which costs more than the SQLite work
of Taskyard's statements (docs/performance.md, change 16). The price: while a statement runs the
loop waits, so a long one delays everything else. SQLite is the one-process laptop default;
PostgreSQL is the database for load.
"""

import asyncio
import contextlib
import os
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


class WalSync:
    """The fsync of a database's WAL file on a worker thread, shared by the commits made before it
    began (group commit).

    With `synchronous=FULL` SQLite fsyncs the WAL inside each commit, and inline (above) that
    blocks the event loop for the disk's flush (0.3-0.7 ms here). A commit made unsynced (in WAL
    order, as `InlineConnection.unsynced`) and then `await synced()` is as durable once it
    returns, while the loop goes on meanwhile: the submit path publishes in that time
    (docs/architecture.md, "Submit"). fsync of any descriptor of a file flushes all of its written
    pages, whoever wrote them."""

    def __init__(self, db_path: str) -> None:
        self._wal = f"{db_path}-wal"
        self._dir = os.path.dirname(os.path.abspath(db_path))
        self._inode: int | None = None  # of the WAL file last synced
        self._due: asyncio.Future[None] | None = None  # the next fsync's waiters
        self._worker: asyncio.Task[None] | None = None

    async def synced(self) -> None:
        """Returns once an fsync begun after this call completed (raises what it raised)."""
        if self._due is None:
            self._due = asyncio.get_running_loop().create_future()
        due = self._due
        if self._worker is None:
            self._worker = asyncio.create_task(self._sync_all())
        await asyncio.shield(due)

    async def _sync_all(self) -> None:
        try:
            while (due := self._due) is not None:
                self._due = None  # who comes from now on needs the next fsync
                try:
                    await asyncio.to_thread(self._fsync)
                except Exception as exc:  # noqa: BLE001 - each waiter raises it
                    due.set_exception(exc)
                else:
                    due.set_result(None)
        finally:
            self._worker = None

    def _fsync(self) -> None:
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # none: the last connection to close checkpointed it into the database, synced
        try:
            os.fsync(fd)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        if inode != self._inode:
            # A WAL file new since the last sync: its name must be on the disk too, as SQLite
            # syncs the directory the first time it syncs a new journal.
            fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._inode = inode


class InlineConnection:
    """The part of `aiosqlite.Connection` that SQLAlchemy's adapter and `DriverInsert` use (a call
    that nothing makes is left out). `wal`: the database's WalSync when commits are to be fsynced
    (`synchronous=FULL`), else None."""

    def __init__(self, conn: sqlite3.Connection, wal: WalSync | None = None) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # the adapter checks it before commit
        self.wal = wal

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
        error is rolled back here, as its session would. Without `wal` the connection is not FULL
        (make_engine): its commits do not fsync anyway, and nothing changes."""
        if self.wal is None:
            yield
            return
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                self._conn.rollback()
            self._conn.execute("PRAGMA synchronous=FULL")

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


def inline_creator(path: str, timeout: float, synced: bool):
    """`async_creator` for `create_async_engine`: a new inline connection to the file `path`;
    `synced`: its commits are to reach the disk (`synchronous=FULL`), and its connections share one
    WalSync for the ones made unsynced."""
    wal = WalSync(path) if synced and path != ":memory:" else None

    async def connect() -> InlineConnection:
        # check_same_thread=False: SQLAlchemy may close a connection from a finalizer elsewhere.
        return InlineConnection(sqlite3.connect(path, timeout=timeout, check_same_thread=False), wal)

    return connect
