"""`db.one_of`: `column IN values` with one SQLite statement text whatever the count (its rows
against a real database: tests/test_driver_sql.py)."""

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from taskyard_api.db import one_of
from taskyard_api.models import jobs_table

ID = jobs_table.c.id


def _sqlite_text(ids: list[str]) -> str:
    return str(select(ID).where(one_of(ID, ids, "sqlite")).compile(dialect=sqlite.dialect()))


def test_sqlite_has_one_statement_text_for_any_count() -> None:
    # sqlite3 caches a prepared statement per text: IN (?, ?, …) made one per count.
    assert _sqlite_text(["a"]) == _sqlite_text([f"j{i}" for i in range(1000)])
    assert "json_each" in _sqlite_text(["a"])


def _postgresql_text(ids: list[str]) -> str:
    return str(select(ID).where(one_of(ID, ids, "postgresql")).compile(dialect=postgresql.dialect()))


def test_postgresql_has_one_statement_text_for_any_count() -> None:
    # asyncpg prepares each new text: one array parameter instead of a list of them.
    assert _postgresql_text(["a"]) == _postgresql_text([f"j{i}" for i in range(1000)])
    assert "= ANY (" in _postgresql_text(["a"])
