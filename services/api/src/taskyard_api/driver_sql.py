"""Statements of the hot paths (submit, marking, projection) run straight through the database
driver, many rows at a time.

A session's own Python was most of what these statements cost: its per-row parameter processing
and execution context took more CPU than SQLite's own work on Taskyard's small rows
(docs/performance.md, changes 14 and 43). The SQL and the value conversion still come from
SQLAlchemy: a statement is compiled once per dialect and set of row keys, and each value goes
through its column type's bind processor (JSON is stored byte for byte as a session stores it);
only the execution skips it. Driver errors come out as SQLAlchemy's `IntegrityError` (unique or
foreign key) or `DBAPIError`, the exceptions a session raises, so callers treat them alike.
"""

import sqlite3
from collections.abc import Callable
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

_DRIVER_ERRORS = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
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
            prepared = self._prepared[(dialect.name, names)] = (compiled.string, params)
        return prepared

    def params(self, dialect: Dialect, rows: list[dict[str, Any]]) -> tuple[str, list[tuple]]:
        """The SQL and each row's driver parameters."""
        sql, params = self.prepare(dialect, tuple(rows[0]))
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
            await driver.executemany(sql, params)
        except _DRIVER_ERRORS as exc:
            raise _as_sqlalchemy(exc, sql) from exc


class DriverInsert:
    """`await insert((table, rows), …)`: new rows of several tables, committed together or not at
    all, on a pooled connection of its own (the submit path: no session at all)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.sync_engine.dialect
        self._inserts: dict[str, Many] = {}

    def _many(self, table: Table) -> Many:
        many = self._inserts.get(table.name)
        if many is None:
            many = self._inserts[table.name] = Many(lambda _dialect: insert(table))
        return many

    async def __call__(self, *batches: tuple[Table, list[dict[str, Any]]]) -> None:
        statements = [self._many(table).params(self.dialect, rows) for table, rows in batches if rows]
        if not statements:
            return
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # a pooled connection that is checked out is open
            sql = statements[0][0]
            try:
                if self.dialect.name == "sqlite":
                    # sqlite3 (inline, see sqlite_inline) opens the transaction before the INSERT.
                    try:
                        for sql, params in statements:
                            await driver.executemany(sql, params)
                        await driver.commit()
                    except BaseException:
                        await driver.rollback()
                        raise
                elif len(statements) == 1:
                    # asyncpg runs an executemany in a transaction of its own (all rows or none).
                    await driver.executemany(*statements[0])
                else:
                    async with driver.transaction():
                        for sql, params in statements:
                            await driver.executemany(sql, params)
            except _DRIVER_ERRORS as exc:
                raise _as_sqlalchemy(exc, sql) from exc


def _as_sqlalchemy(exc: BaseException, sql: str) -> DBAPIError:
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    unique = isinstance(exc, sqlite3.IntegrityError) or sqlstate.startswith("23")
    return (IntegrityError if unique else DBAPIError)(sql, None, exc)
