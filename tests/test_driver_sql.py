"""DriverInsert and Many against a real database: the same rows a session writes, the same errors."""

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from taskyard_api.db import listed, make_engine, make_sessionmaker, one_of, unsynced
from taskyard_api.driver_sql import DriverInsert
from taskyard_api.models import ApiKey, JobEdge
from taskyard_api.models import Job as JobModel
from taskyard_common.settings import DbSettings

from .stack import run_async

_jobs = JobModel.__table__


def _row(job_id: str, **overrides) -> dict:
    row = dict(
        id=job_id, type="noop", queue="default", priority="normal", status="pending",
        payload={"text": "é ☃ \u2028", "n": [1, 2.5, None]}, labels={"team": "data"},
        timeout_s=10.0, max_attempts=3, backoff={"base_s": 1.0}, idempotency_key=None,
        owner_id="k", generation=0, resume=0, attempt=0, last_event_seq=0, created_at=1.5,
        updated_at=1.5, traceparent=None,
    )  # fmt: skip
    row.update(overrides)
    return row


async def _with_engine(db_url: str, body):
    engine = make_engine(DbSettings(url=db_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(ApiKey.__table__).values(id="k", name="k", role="admin", key_hash="h", created_at=0)
            )
        return await body(engine)
    finally:
        await engine.dispose()


def test_rows_match_a_session_insert_and_a_batch_is_all_or_nothing(db_url):
    async def body(engine):
        via_driver = DriverInsert(engine)
        async with engine.begin() as conn:  # the reference: SQLAlchemy's own executemany
            await conn.execute(insert(_jobs), [_row("A" * 26), _row("C" * 26, payload=None)])
        await via_driver((_jobs, [_row("B" * 26), _row("D" * 26, payload=None)]))
        # A duplicate id in the middle of a batch: nothing of that batch is stored.
        with pytest.raises(IntegrityError):
            await via_driver((_jobs, [_row("E" * 26), _row("B" * 26), _row("F" * 26)]))
        # Two tables in one call: a failure in the second leaves nothing of the first either.
        edges = JobEdge.__table__
        with pytest.raises(IntegrityError):
            await via_driver(
                (_jobs, [_row("H" * 26)]),
                (
                    edges,
                    [{"parent_id": "A" * 26, "child_id": "H" * 26, "on": "succeeded", "state": "open"}] * 2,
                ),
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(select(_jobs).order_by(_jobs.c.id))).mappings().all()
            raw = (await conn.exec_driver_sql("SELECT id, CAST(payload AS TEXT) FROM jobs ORDER BY id")).all()
        return [dict(r) for r in rows], raw

    rows, raw = run_async(_with_engine(db_url, body))
    assert [r["id"][0] for r in rows] == ["A", "B", "C", "D"]
    a, b, c, d = rows
    assert {**b, "id": a["id"]} == a  # every column, JSON included, as the session stored it
    assert {**d, "id": c["id"]} == c
    assert raw[1][1] == raw[0][1] and raw[3][1] == raw[2][1]  # even the stored text


def test_driver_errors_come_out_as_sqlalchemy_errors(db_url):
    async def body(engine):
        with pytest.raises(DBAPIError) as caught:
            await DriverInsert(engine)((_jobs, [_row("G" * 26, owner_id="no-such-key")]))
        return caught.value

    error = run_async(_with_engine(db_url, body))
    # A foreign-key violation is an integrity error on both databases (SQLSTATE 23503 on PG).
    assert isinstance(error, IntegrityError)
    assert error.orig is not None


def test_a_connection_left_unusable_answers_as_database_trouble_and_leaves_the_pool(db_url, monkeypatch):
    """asyncpg's "another operation is in progress" (a connection PostgreSQL cut off mid-way, under
    submit load) came out raw: the submit answered 500, and the pool handed the connection out
    again. Now it is a DBAPIError (the api's 503) and the connection is replaced."""
    import asyncpg

    from taskyard_api import driver_sql

    async def body(engine):
        async def raw_id() -> int:
            async with engine.connect() as conn:
                return id((await conn.get_raw_connection()).driver_connection)

        before = await raw_id()
        real = driver_sql._execute

        async def stuck(*_args):
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

        monkeypatch.setattr(driver_sql, "_execute", stuck)
        with pytest.raises(DBAPIError) as caught:
            await DriverInsert(engine)((_jobs, [_row("J" * 26)]))
        assert not isinstance(caught.value, IntegrityError)
        monkeypatch.setattr(driver_sql, "_execute", real)
        after = await raw_id()
        await DriverInsert(engine)((_jobs, [_row("J" * 26)]))  # a fresh connection works
        return before, after

    before, after = run_async(_with_engine(db_url, body))
    assert before != after


def test_many_runs_inside_the_sessions_transaction_and_writes_what_a_session_writes(db_url):
    """Many's rows commit or roll back with the session, even as its first statement (asyncpg
    would otherwise commit them at once), and its UPDATE and INSERT … ON CONFLICT DO NOTHING
    store what SQLAlchemy's own executemany stores."""
    from sqlalchemy import bindparam, update
    from sqlalchemy.ext.asyncio import AsyncSession

    from taskyard_api.driver_sql import Many
    from taskyard_api.models import events_table

    set_payload = Many(
        lambda _d: update(_jobs).where(_jobs.c.id == bindparam("b_id")).values(payload=bindparam("b_payload"))
    )
    timeline = Many.insert_ignoring(events_table, "stream_seq")

    def event(seq: int, job_id: str) -> dict:
        return dict(
            job_id=job_id, stream_seq=seq, type="started", at=2.5, attempt=1, worker_id="w", data={"x": "é"}
        )

    async def body(engine):
        await DriverInsert(engine)((_jobs, [_row("A" * 26), _row("B" * 26), _row("C" * 26)]))
        async with AsyncSession(engine) as session:  # first statement of the transaction, then rolled back
            await set_payload.run(session, [{"b_id": "A" * 26, "b_payload": {"gone": True}}])
            await session.rollback()
        async with AsyncSession(engine) as session:
            await set_payload.run(session, [{"b_id": "B" * 26, "b_payload": {"n": [1, None]}}])
            await timeline.run(session, [event(1, "A" * 26), event(2, "A" * 26)])
            await timeline.run(session, [event(2, "A" * 26), event(3, "A" * 26)])  # 2 is there: ignored
            await session.commit()
        async with engine.begin() as conn:  # the reference, through SQLAlchemy
            await conn.execute(update(_jobs).where(_jobs.c.id == "C" * 26).values(payload={"n": [1, None]}))
            await conn.execute(insert(events_table), [event(4, "B" * 26)])
        async with engine.connect() as conn:
            jobs = (
                await conn.exec_driver_sql("SELECT id, CAST(payload AS TEXT) FROM jobs ORDER BY id")
            ).all()
            events = (
                await conn.exec_driver_sql(
                    "SELECT stream_seq, job_id, CAST(data AS TEXT) FROM job_events ORDER BY stream_seq"
                )
            ).all()
        return jobs, events

    jobs, events = run_async(_with_engine(db_url, body))
    assert "gone" not in jobs[0][1]  # rolled back
    assert jobs[1][1] == jobs[2][1] and '"n"' in jobs[1][1]  # the same stored text as the session's
    assert [e[0] for e in events] == [1, 2, 3, 4]
    assert events[0][2] == events[3][2]


def test_one_of_finds_exactly_the_listed_rows(db_url):
    async def body(engine):
        await DriverInsert(engine)((_jobs, [_row(c * 26) for c in "ABCD"]))
        dialect = engine.dialect.name
        query = select(_jobs.c.id).where(one_of(_jobs.c.id, dialect)).order_by(_jobs.c.id)
        async with engine.connect() as conn:
            # One statement, built once, for any list (its values are its parameter).
            wanted = ["D" * 26, "A" * 26, "Z" * 26, "A" * 26]
            found = await conn.scalars(query, {"ids": listed(wanted, dialect)})
            assert list(found) == ["A" * 26, "D" * 26]
            assert list(await conn.scalars(query, {"ids": listed(["B" * 26], dialect)})) == ["B" * 26]
            assert list(await conn.scalars(query, {"ids": listed([], dialect)})) == []

    run_async(_with_engine(db_url, body))


def test_an_unsynced_commit_skips_the_disk_wait_and_leaves_the_connection_as_it_was(db_url):
    """db.unsynced (the outbox's marking): its transaction commits without waiting for the disk,
    and the connection is back to syncing after it, also when the block fails midway (rolled back).
    tests/test_machine_crash.py shows a marking lost in a machine crash made up for."""

    async def body(engine):
        sessions = make_sessionmaker(engine)
        sqlite = engine.dialect.name == "sqlite"
        show = text("PRAGMA synchronous" if sqlite else "SHOW synchronous_commit")
        async with sessions() as s, unsynced(s):
            await s.execute(insert(_jobs), [_row("U" * 26)])
            inside = (await s.execute(show)).scalar()
            await s.commit()
        with pytest.raises(RuntimeError):
            async with sessions() as s, unsynced(s):
                await s.execute(insert(_jobs), [_row("V" * 26)])
                raise RuntimeError("midway")
        async with sessions() as s:
            after = (await s.execute(show)).scalar()
            stored = list(await s.scalars(select(_jobs.c.id).order_by(_jobs.c.id)))
        return inside, after, stored

    inside, after, stored = run_async(_with_engine(db_url, body))
    # SQLite: NORMAL (1) inside, FULL (2) again after; PostgreSQL: off for that transaction only.
    assert (inside, after) == ((1, 2) if db_url.startswith("sqlite") else ("off", "on"))
    assert stored == ["U" * 26]
