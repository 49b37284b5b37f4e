"""Which projector failures are outages (retry the batch) and which are events it cannot project."""

import sqlite3

from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from taskyard_api.projector import is_outage


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        self.sqlstate = sqlstate


def test_things_that_are_away_are_outages():
    assert is_outage(NatsTimeout())
    assert is_outage(ConnectionRefusedError())
    assert is_outage(OperationalError("SELECT 1", None, sqlite3.OperationalError("database is locked")))
    assert is_outage(DBAPIError("SELECT 1", None, _PgError("08006")))  # connection failure
    assert is_outage(DBAPIError("SELECT 1", None, Exception("unknown")))  # unsure: an outage


def test_bad_values_and_bugs_are_not():
    assert not is_outage(DataError("INSERT", None, _PgError("22P05")))
    assert not is_outage(IntegrityError("INSERT", None, _PgError("23505")))
    assert not is_outage(DBAPIError("INSERT", None, _PgError("22003")))
    assert not is_outage(KeyError("checkpoint"))
    assert not is_outage(TypeError("unexpected keyword"))
