"""driver_sql._columnar: a statement compiled for one row, rewritten to take every row at once."""

import pytest
from sqlalchemy import bindparam, literal, update
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from taskyard_api.driver_sql import Many, _columnar
from taskyard_api.models import Job, JobEventRow

_dialect = pg_asyncpg.dialect()
_jobs, _events = Job.__table__, JobEventRow.__table__
_EVENT_COLUMNS = ("job_id", "stream_seq", "type", "at", "attempt", "worker_id", "data")


def test_an_insert_reads_its_rows_from_unnest_and_keeps_on_conflict_but_not_returning():
    sql, _ = Many.insert_ignoring(_events, "stream_seq").prepare(_dialect, _EVENT_COLUMNS)
    assert sql == (
        "INSERT INTO job_events (job_id, stream_seq, type, at, attempt, worker_id, data) "
        "SELECT v.p1, v.p2, v.p3, v.p4, v.p5, v.p6, v.p7 FROM unnest($1::VARCHAR[], $2::BIGINT[], "
        "$3::VARCHAR[], $4::FLOAT[], $5::INTEGER[], $6::VARCHAR[], $7::JSONB[]) "
        "AS v(p1, p2, p3, p4, p5, p6, p7) ON CONFLICT (stream_seq) DO NOTHING"
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
        "UPDATE jobs SET stream_seq=v.p1, outbox_at=$2::FLOAT "
        "FROM unnest($1::BIGINT[], $3::VARCHAR[]) AS v(p1, p3) "
        "WHERE jobs.id = v.p3 AND (jobs.status NOT IN ($4::VARCHAR, $5::VARCHAR))"
    )
    # Row parameters take a column of values each; the others stay single values.
    assert [name for name, _, _ in params] == ["b_seq", None, "b_id", None, None]


def test_the_parameters_are_one_array_per_row_parameter():
    many = Many.insert_ignoring(_events, "stream_seq")
    rows = [
        dict(zip(_EVENT_COLUMNS, (job_id, seq, "started", 1.5, 1, None, data), strict=True))
        for job_id, seq, data in (("a", 1, {"x": 1}), ("b", 2, {}))
    ]
    _, params = many.params(_dialect, rows)
    assert len(params) == 1
    job_ids, seqs, types, _at, _attempts, workers, data = params[0]
    assert (job_ids, seqs, types, workers) == (["a", "b"], [1, 2], ["started"] * 2, [None, None])
    assert len(data) == 2 and all(isinstance(value, str) for value in data)  # JSON, as a session binds it


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
        "INSERT INTO t (a, b, c, d) SELECT v.p1, v.p2, v.p3, v.p4 FROM unnest($1::TIMESTAMP WITH TIME "
        "ZONE[], $2::NUMERIC(10, 2)[], $3::DOUBLE PRECISION[], $4::VARCHAR[]) AS v(p1, p2, p3, p4)"
    )
    # A one-word type is not followed into the statement's own words.
    update_sql = "UPDATE t SET a=$1::VARCHAR WHERE t.b = $2::INTEGER AND t.c IS NULL"
    assert _columnar(update_sql, [("a", None, None), ("b", None, None)]) == (
        "UPDATE t SET a=v.p1 FROM unnest($1::VARCHAR[], $2::INTEGER[]) AS v(p1, p2) "
        "WHERE t.b = v.p2 AND t.c IS NULL"
    )


def test_an_array_row_parameter_is_refused():
    with pytest.raises(ValueError, match="is an array"):
        _columnar("INSERT INTO t (g) VALUES ($1::INTEGER[])", [("g", None, None)])
