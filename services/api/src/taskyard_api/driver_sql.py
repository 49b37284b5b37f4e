"""Statements of the hot paths (submit, marking, projection) run straight through the database
driver, many rows at a time.

A session's own Python was most of what these statements cost: its per-row parameter processing
and execution context took more CPU than SQLite's own work on Taskyard's small rows
(docs/performance.md, changes 14 and 43). The SQL and the value conversion still come from
SQLAlchemy: a statement is compiled once per dialect and set of row keys, and each value goes
through its column type's bind processor (JSON is stored byte for byte as a session stores it);
only the execution skips it. Driver errors come out as SQLAlchemy's `IntegrityError` (unique or
foreign key) or `DBAPIError`, the exceptions a session raises, so callers treat them alike.

On PostgreSQL the rows go in as one statement, not one per row: the rows are one JSON document
(an object a row) and the statement reads them from `json_to_recordset` (`_columnar`). asyncpg's
executemany pipelines the rows but the server still plans and runs the statement once per row;
for a submit's 500 markings that was 20 ms of the server's time against 12 ms as one statement.
Until stop 44 each row parameter went as an array read by `unnest`: the same server time, but
asyncpg's array encoder checks every element against three abstract base classes, and encoding
a submit's INSERT took 5.7-8.7 ms of the api's CPU for 500 rows against 3.0-3.7 ms as JSON
(pydantic-core writes it). sqlite3's executemany runs in-process and stays.
"""

import contextlib
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
import pydantic_core
from sqlalchemy import Table, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.util import greenlet_spawn

from .sqlite_inline import InlineConnection

_DRIVER_ERRORS = (
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # "cannot switch to state …; another operation is in progress": a connection left mid-way
    # when PostgreSQL cut it off (seen when the database was taken away under submit load).
    asyncpg.InternalClientError,
    OSError,
)
# A parameter of a prepared statement: the row key it takes its value from (None: a constant of
# the statement, in `value`) and its bind processor.
_Param = tuple[str | None, Any, Callable[[Any], Any] | None]


class Many:
    """A DML statement (`build(dialect_name)`) executed for many rows: dicts with the same keys,
    named like the statement's bind parameters (an INSERT's: its column names)."""

    def __init__(self, build: Callable[[str], ClauseElement]) -> None:
        self._build = build
        self._prepared: dict[tuple[str, tuple[str, ...]], tuple[str, list[_Param]]] = {}

    @classmethod
    def insert_ignoring(cls, table: Table, *key: str) -> "Many":
        """INSERT … ON CONFLICT (key) DO NOTHING: inserting the same row twice inserts it once."""
        return cls(
            lambda dialect: (pg_insert if dialect == "postgresql" else sqlite_insert)(
                table
            ).on_conflict_do_nothing(index_elements=list(key))
        )

    def prepare(self, dialect: Dialect, names: tuple[str, ...]) -> tuple[str, list[_Param]]:
        prepared = self._prepared.get((dialect.name, names))
        if prepared is None:
            compiled = cast(
                SQLCompiler, self._build(dialect.name).compile(dialect=dialect, column_keys=list(names))
            )
            if compiled.insert_prefetch or compiled.update_prefetch:
                # Python-side defaults are computed by a session's execution context, not here.
                missing = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
                raise ValueError(f"rows must carry {missing}: their defaults are not applied here")
            params: list[_Param] = []
            for name in compiled.positiontup or ():
                bind = compiled.binds[name]
                if bind.expanding:
                    raise ValueError(f"{name}: an expanding IN parameter cannot run for many rows")
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                params.append(
                    (name, None, process) if name in names else (None, bind.effective_value, process)
                )
            sql = _columnar(compiled.string, params) if dialect.name == "postgresql" else compiled.string
            prepared = self._prepared[(dialect.name, names)] = (sql, params)
        return prepared

    def params(self, dialect: Dialect, rows: list[dict[str, Any]]) -> tuple[str, list[tuple]]:
        """The SQL and its driver parameters: each row's (executemany), or on PostgreSQL one tuple of
        the statement's constants and then the rows as one JSON document (`_columnar`)."""
        sql, params = self.prepare(dialect, tuple(rows[0]))
        if dialect.name == "postgresql":
            constants = []
            columns = []  # (key in the document, row key, bind processor)
            for k, (name, value, process) in enumerate(params, 1):
                if name is None:
                    constants.append(value if process is None else process(value))
                else:
                    columns.append((f"p{k}", name, process))
            document = [
                {key: row[name] if process is None else process(row[name]) for key, name, process in columns}
                for row in rows
            ]
            # Infinity and NaN as PostgreSQL spells them (float8in reads both), not as null.
            return sql, [(*constants, pydantic_core.to_json(document, inf_nan_mode="strings").decode())]
        out = []
        for row in rows:
            values = []
            for name, value, process in params:
                if name is not None:
                    value = row[name]
                values.append(value if process is None else process(value))
            out.append(tuple(values))
        return sql, out

    async def run(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Execute for `rows` inside the session's transaction (it commits or rolls back with it)."""
        if not rows:
            return
        conn = await session.connection()
        sql, params = self.params(conn.dialect, rows)
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None  # a connection a session holds is open
        try:
            if conn.dialect.name == "postgresql":
                # SQLAlchemy's asyncpg adapter begins its transaction at its first statement; one
                # that has not run yet must begin here, or asyncpg would commit these rows at once.
                adapter: Any = raw.dbapi_connection
                if adapter._transaction is None and adapter.isolation_level != "autocommit":
                    await adapter._start_transaction()
            # sqlite3 (inline, see sqlite_inline) opens the session's transaction before DML.
            await _execute(driver, sql, params)
        except _DRIVER_ERRORS as exc:
            raise await _failed(conn, exc, sql) from exc


async def _execute(driver: Any, sql: str, params: list[tuple]) -> None:
    """Run what `Many.params` made: one statement for all rows (PostgreSQL), or one per row."""
    if isinstance(driver, asyncpg.Connection):
        await driver.execute(sql, *params[0])
    else:
        await driver.executemany(sql, params)


# `$3::VARCHAR`: a parameter of a compiled PostgreSQL statement and its whole cast, as SQLAlchemy
# renders them: `NUMERIC(10, 2)`, `TIMESTAMP WITH TIME ZONE`, `INTEGER[]` (the type names of more
# than one word are listed: a word after a one-word type is the statement's, as in `$1::VARCHAR AND`).
_PLACEHOLDER = re.compile(
    r"\$(\d+)(?:::("
    r"(?:DOUBLE PRECISION|(?:TIMESTAMP|TIME) WITH(?:OUT)? TIME ZONE|CHARACTER VARYING|[A-Z]+)"
    r"(?:\(\d+(?:, \d+)?\))?(?:\[\])*"
    r"))?"
)


# Columns a JSON document hands over as text, cast back in the statement: json_to_recordset would
# read a JSON string (what a session binds for a JSON column) as a JSON string, not as the value.
_JSON_TYPES = ("JSON", "JSONB")


def _columnar(sql: str, params: list[_Param]) -> str:
    """The statement for all rows at once: each row parameter `$k::T` is read as column `v.pk` of
    `json_to_recordset($n::JSON) AS v(pk T, …)`, the rows' document being the last parameter
    (`$n`); the statement's constants keep their casts and are numbered first, in their order.

    `INSERT … VALUES (…) [ON CONFLICT …]` becomes `INSERT … SELECT … FROM json_to_recordset(…)
    [ON CONFLICT …]`, `UPDATE … SET … WHERE …` becomes `UPDATE … SET … FROM json_to_recordset(…)
    WHERE …` (rows name distinct keys: an UPDATE … FROM applies one source row per target row).
    RETURNING is dropped: nothing reads it. Other statements are refused when built, not run
    half-right.
    """
    columns: list[str] = []  # `pk T` of each row parameter, for the record's definition
    renumbered = {k: n for n, k in enumerate((k for k, p in enumerate(params, 1) if p[0] is None), 1)}

    def column(match: re.Match[str]) -> str:
        k, cast_to = int(match.group(1)), match.group(2)
        if params[k - 1][0] is None:
            return f"${renumbered[k]}" + (f"::{cast_to}" if cast_to else "")
        if not cast_to:
            raise ValueError(f"{sql!r}: parameter ${k} has no type to read its rows as")
        if cast_to.endswith("[]"):
            raise ValueError(f"{sql!r}: parameter ${k} is an array; rows of arrays are not supported")
        if cast_to in _JSON_TYPES:
            columns.append(f"p{k} TEXT")
            return f"v.p{k}::{cast_to}"
        columns.append(f"p{k} {cast_to}")
        return f"v.p{k}"

    body = _PLACEHOLDER.sub(column, sql.split(" RETURNING ", 1)[0])
    source = f"json_to_recordset(${len(renumbered) + 1}::JSON) AS v({', '.join(columns)})"
    if body.startswith("INSERT ") and " VALUES (" in body:
        head, _, rest = body.partition(" VALUES (")
        values, _, tail = rest.partition(")")
        return f"{head} SELECT {values} FROM {source}{tail}"
    if body.startswith("UPDATE ") and " WHERE " in body:
        head, _, where = body.partition(" WHERE ")
        return f"{head} FROM {source} WHERE {where}"
    raise ValueError(f"{sql!r}: only INSERT … VALUES and UPDATE … WHERE run for many rows")


class DriverInsert:
    """`await insert((table, rows), …)`: new rows of several tables, committed together or not at
    all, on a pooled connection of its own (the submit path: no session at all)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.sync_engine.dialect
        self._pool = engine.sync_engine.pool
        self._inserts: dict[str, Many] = {}

    def _many(self, table: Table) -> Many:
        many = self._inserts.get(table.name)
        if many is None:
            many = self._inserts[table.name] = Many(lambda _dialect: insert(table))
        return many

    async def __call__(self, *batches: tuple[Table, list[dict[str, Any]]]) -> Callable[[], Awaitable[None]]:
        """Returns `durable`, to await before anyone is told the rows are kept. SQLite's commit
        (with `synchronous=FULL`) does not wait for the disk here: `durable` fsyncs its WAL on a
        worker thread (sqlite_inline.WalSync), and the caller may publish meanwhile. Elsewhere
        the commit has waited already."""
        statements = [self._many(table).params(self.dialect, rows) for table, rows in batches if rows]
        if not statements:
            return _kept
        if self.dialect.name == "sqlite":
            return await self._sqlite(statements)
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # a pooled connection that is checked out is open
            sql = statements[0][0]
            try:
                if len(statements) == 1:
                    await _execute(driver, *statements[0])  # one statement: all rows or none
                else:
                    async with driver.transaction():
                        for sql, params in statements:
                            await _execute(driver, sql, params)
            except _DRIVER_ERRORS as exc:
                raise await _failed(conn, exc, sql) from exc
        return _kept

    async def _sqlite(self, statements: list[tuple[str, list[tuple]]]) -> Callable[[], Awaitable[None]]:
        """The rows through sqlite3 (inline, see sqlite_inline), which opens the transaction before
        the INSERT. The connection comes straight from the pool, not through an AsyncConnection:
        that wrapper's checkout and close were ~65 of a lone submit's ~320 µs here, on its way to
        being published (W2)."""
        pooled = await greenlet_spawn(self._pool.connect)
        sql = statements[0][0]
        try:
            driver = cast(InlineConnection, pooled.driver_connection)
            with driver.unsynced() if driver.wal else contextlib.nullcontext():
                try:
                    for sql, params in statements:
                        await _execute(driver, sql, params)
                    await driver.commit()
                except BaseException:
                    await driver.rollback()
                    raise
            return driver.wal.synced if driver.wal else _kept
        except _DRIVER_ERRORS as exc:
            if not _usable_after(exc):
                await greenlet_spawn(pooled.invalidate)
            raise _as_session_error(exc, sql) from exc
        finally:
            await greenlet_spawn(pooled.close)


async def _kept() -> None:
    """A commit that waited for the disk itself: nothing more to wait for."""


async def _failed(conn: AsyncConnection, exc: BaseException, sql: str) -> DBAPIError:
    """A driver error as the exception a session raises (`IntegrityError` for a unique or foreign
    key, else `DBAPIError`). A connection the error left unusable is kept out of the pool first:
    SQLAlchemy does that for the errors it sees, but these statements bypass its execution, so it
    would hand the connection out again (still closed, or still mid-operation)."""
    if not _usable_after(exc):
        await conn.invalidate()
    return _as_session_error(exc, sql)


def _usable_after(exc: BaseException) -> bool:
    """A statement's own error (a taken key, a bad value) leaves the connection fine; PostgreSQL's
    class 08 (connection exception) and 57P (the server shutting it down) and asyncpg's interface
    errors do not."""
    if isinstance(exc, sqlite3.Error):
        return True
    return isinstance(exc, asyncpg.PostgresError) and not _sqlstate(exc).startswith(("08", "57P"))


def _as_session_error(exc: BaseException, sql: str) -> DBAPIError:
    unique = isinstance(exc, sqlite3.IntegrityError) or _sqlstate(exc).startswith("23")
    return (IntegrityError if unique else DBAPIError)(sql, None, exc)


def _sqlstate(exc: BaseException) -> str:
    """PostgreSQL's SQLSTATE of a driver error ("" for any other)."""
    return str(getattr(exc, "sqlstate", "") or "")
