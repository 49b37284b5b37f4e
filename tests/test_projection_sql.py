"""The projector's cached UPDATE, run as executemany on a real SQLite database."""

from sqlalchemy import create_engine, insert, select

from taskyard_api.models import Base
from taskyard_api.projector import _jobs, _update_jobs


def _row(job_id: str, status: str) -> dict:
    return dict(
        id=job_id, type="noop", queue="q", priority="normal", status=status, timeout_s=1,
        max_attempts=1, backoff={}, labels={}, owner_id="o", generation=0, resume=0, attempt=0,
        last_event_seq=0, created_at=0.0, updated_at=0.0,
    )  # fmt: skip


def test_a_non_final_outcome_leaves_rows_made_final_meanwhile_alone():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # no api_keys rows needed here
        conn.execute(insert(_jobs), [_row("a", "queued"), _row("b", "cancelled"), _row("c", "queued")])
        # Several rows at once: the statement must work as an executemany (an expanding IN did not).
        params = [{"b_id": i, "b_status": "running", "b_last_event_seq": 7} for i in "abc"]
        conn.execute(_update_jobs(("status", "last_event_seq"), unless_final=True), params)
        # A final outcome is not guarded: `succeeded` may land on a row the API cancelled.
        conn.execute(_update_jobs(("status",), unless_final=False), [{"b_id": "b", "b_status": "succeeded"}])
        rows = dict(conn.execute(select(_jobs.c.id, _jobs.c.status)).all())
    assert rows == {"a": "running", "b": "succeeded", "c": "running"}
