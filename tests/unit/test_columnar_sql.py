"""driver_sql._columnar: a statement compiled for one row, rewritten to take every row at once."""

import json

import pytest
from sqlalchemy import bindparam, literal, update
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from taskyard_api.driver_sql import Many, _columnar
from taskyard_api.models import Job, JobEventRow

_dialect = pg_asyncpg.dialect()
_jobs, _events = Job.__table__, JobEventRow.__table__
_EVENT_COLUMNS = ("job_id", "stream_seq", "type", "at", "attempt", "worker_id", "data")


def test_an_insert_reads_its_rows_from_a_json_document_and_keeps_on_conflict_but_not_returning():
    sql, _ = Many.insert_ignoring(_events, "stream_seq").prepare(_dialect, _EVENT_COLUMNS)
    assert sql == (
        "INSERT INTO job_events (job_id, stream_seq, type, at, attempt, worker_id, data) "
        "SELECT v.p1, v.p2, v.p3, v.p4, v.p5, v.p6, v.p7::JSONB FROM json_to_recordset($1::JSON) "
        "AS v(p1 VARCHAR, p2 BIGINT, p3 VARCHAR, p4 FLOAT, p5 INTEGER, p6 VARCHAR, p7 TEXT) "
        "ON CONFLICT (stream_seq) DO NOTHING"
    )


def test_an_update_joins_its_rows_and_keeps_the_statements_constants_as_they_are():
    statement = (
        update(_jobs)
        .where(
            _jobs.c.id == bindparam("b_id"),
            _jobs.c.status.not_in([literal(s, literal_execute=False) for s in ("cancelled", "dead")]),
        )
        .values(stream_seq=bindparam("b_seq"), outbox_at=None)
    )
    sql, params = Many(lambda _d: statement).prepare(_dialect, ("b_seq", "b_id"))
    assert sql == (
        "UPDATE jobs SET stream_seq=v.p1, outbox_at=$1::FLOAT "
        "FROM json_to_recordset($4::JSON) AS v(p1 BIGINT, p3 VARCHAR) "
        "WHERE jobs.id = v.p3 AND (jobs.status NOT IN ($2::VARCHAR, $3::VARCHAR))"
    )
    # Row parameters are read from the rows' document; the others stay single values, first.
    assert [name for name, _, _ in params] == ["b_seq", None, "b_id", None, None]


def test_the_parameters_are_the_constants_then_one_json_document_of_the_rows():
    many = Many.insert_ignoring(_events, "stream_seq")
    rows = [
        dict(zip(_EVENT_COLUMNS, (job_id, seq, "started", at, 1, None, data), strict=True))
        for job_id, seq, at, data in (("a", 1, 1733600000.123456, {"x": 1}), ("b", 2, float("inf"), {}))
    ]
    _, params = many.params(_dialect, rows)
    assert len(params) == 1
    [document] = params[0]
    assert json.loads(document) == [
        # JSON columns as a session binds them (JSON text); floats exact, infinity as PostgreSQL
        # spells it.
        {"p1": "a", "p2": 1, "p3": "started", "p4": 1733600000.123456, "p5": 1, "p6": None, "p7": '{"x": 1}'},
        {"p1": "b", "p2": 2, "p3": "started", "p4": "Infinity", "p5": 1, "p6": None, "p7": "{}"},
    ]


def test_a_statement_it_cannot_rewrite_is_refused_when_built():
    with pytest.raises(ValueError, match="only INSERT"):
        _columnar("DELETE FROM jobs WHERE jobs.id = $1::VARCHAR", [("b_id", None, None)])
    with pytest.raises(ValueError, match="no type"):
        _columnar(
            "UPDATE jobs SET status=$1 WHERE jobs.id = $2::VARCHAR", [("s", None, None), ("b_id", None, None)]
        )


def test_a_cast_of_several_words_or_with_a_size_is_taken_whole():
    sql = (
        "INSERT INTO t (a, b, c, d) VALUES ($1::TIMESTAMP WITH TIME ZONE, $2::NUMERIC(10, 2), "
        "$3::DOUBLE PRECISION, $4::VARCHAR)"
    )
    params = [(name, None, None) for name in ("a", "b", "c", "d")]
    assert _columnar(sql, params) == (
        "INSERT INTO t (a, b, c, d) SELECT v.p1, v.p2, v.p3, v.p4 FROM json_to_recordset($1::JSON) AS "
        "v(p1 TIMESTAMP WITH TIME ZONE, p2 NUMERIC(10, 2), p3 DOUBLE PRECISION, p4 VARCHAR)"
    )
    # A one-word type is not followed into the statement's own words.
    update_sql = "UPDATE t SET a=$1::VARCHAR WHERE t.b = $2::INTEGER AND t.c IS NULL"
    assert _columnar(update_sql, [("a", None, None), ("b", None, None)]) == (
        "UPDATE t SET a=v.p1 FROM json_to_recordset($1::JSON) AS v(p1 VARCHAR, p2 INTEGER) "
        "WHERE t.b = v.p2 AND t.c IS NULL"
    )


def test_an_array_row_parameter_is_refused():
    with pytest.raises(ValueError, match="is an array"):
        _columnar("INSERT INTO t (g) VALUES ($1::INTEGER[])", [("g", None, None)])
