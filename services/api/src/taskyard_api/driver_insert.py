"""INSERT of many rows in one transaction straight through the database driver (the submit path).

A session's own Python was most of a one-row insert's cost (docs/performance.md, change 14). The
SQL and the value conversion still come from SQLAlchemy (the table's columns and their bind
processors, so JSON is stored as a session would store it); only the execution skips it, on the
engine's pooled connection.
"""

import sqlite3

import asyncpg
from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

_DRIVER_ERRORS = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class DriverInsert:
    """`await insert((table, rows), …)`: rows of one table are dicts with the same keys (column
    names); every row of every table is committed, or none.

    Driver errors come out as SQLAlchemy's `IntegrityError` (unique key) or `DBAPIError`, the
    same exceptions a session raises, so callers and the API's error handlers treat them alike.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.sync_engine.dialect
        self._sqlite = self.dialect.name == "sqlite"
        self._prepared: dict[tuple[str, tuple[str, ...]], tuple[str, list]] = {}

    def _prepare(self, table: Table, names: tuple[str, ...]) -> tuple[str, list]:
        prepared = self._prepared.get((table.name, names))
        if prepared is None:
            quote = self.dialect.identifier_preparer.quote
            marks = ["?"] * len(names) if self._sqlite else [f"${i}" for i in range(1, len(names) + 1)]
            sql = (
                f"INSERT INTO {self.dialect.identifier_preparer.format_table(table)} "
                f"({', '.join(quote(n) for n in names)}) VALUES ({', '.join(marks)})"
            )
            columns = [table.columns[n] for n in names]
            processors = [c.type.dialect_impl(self.dialect).bind_processor(self.dialect) for c in columns]
            prepared = self._prepared[(table.name, names)] = (sql, processors)
        return prepared

    def _params(self, rows: list[dict], names: tuple[str, ...], processors: list) -> list[tuple]:
        out = []
        for row in rows:
            values = [row[n] for n in names]
            for i, process in enumerate(processors):
                if process is not None:
                    values[i] = process(values[i])
            out.append(tuple(values))
        return out

    async def __call__(self, *batches: tuple[Table, list[dict]]) -> None:
        statements = []
        for table, rows in batches:
            if rows:
                names = tuple(rows[0])
                sql, processors = self._prepare(table, names)
                statements.append((sql, self._params(rows, names, processors)))
        if not statements:
            return
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # a pooled connection that is checked out is open
            sql = statements[0][0]
            try:
                if self._sqlite:
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
