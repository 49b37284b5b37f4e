"""`db.one_of`: `column IN :ids` with one statement text whatever the count, its values a
parameter (`db.listed`; its rows against a real database: tests/test_driver_sql.py)."""

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from taskyard_api.db import listed, one_of
from taskyard_api.models import jobs_table

ID = jobs_table.c.id


def _sqlite_text() -> str:
    return str(select(ID).where(one_of(ID, "sqlite")).compile(dialect=sqlite.dialect()))


def test_sqlite_has_one_statement_text_for_any_count() -> None:
    # sqlite3 caches a prepared statement per text: IN (?, ?, …) made one per count.
    assert "json_each(?)" in _sqlite_text()
    assert listed(["a", "b"], "sqlite") == '["a","b"]'  # one JSON array, read by json_each


def _postgresql_text() -> str:
    return str(select(ID).where(one_of(ID, "postgresql")).compile(dialect=postgresql.dialect()))


def test_postgresql_has_one_statement_text_for_any_count() -> None:
    # asyncpg prepares each new text: one array parameter instead of a list of them.
    assert "= ANY (%(ids)s::VARCHAR(26)[])" in _postgresql_text()
    assert listed(("a", "b"), "postgresql") == ["a", "b"]
