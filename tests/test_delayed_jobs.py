"""Delayed jobs end to end: `run_at` / `delay_s`, the `scheduled` status, the gate timer."""

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from .invariants import query
from .stack import wait_until

PLUS_2 = timezone(timedelta(hours=2))


def _rfc3339(ts: float) -> str:
    # With an offset other than Z: the API must read any offset, not only UTC.
    return datetime.fromtimestamp(ts, UTC).astimezone(PLUS_2).isoformat()


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_jobs_with_run_at_start_no_earlier_than_it_and_within_100ms_after(stack):
    stack.start_api()
    stack.start_executor(slots=16)
    base = time.time() + 2.0
    # 200 jobs, each 2 s ahead of its submit, their times spread over 2 s (10 ms apart).
    times = [base + i * 0.01 for i in range(200)]
    with stack.http() as c:
        answer = c.post(
            "/api/v1/jobs:batch", json={"jobs": [{"type": "noop", "run_at": _rfc3339(t)} for t in times]}
        )
        assert answer.status_code == 201, answer.text
        jobs = answer.json()["jobs"]
        assert {j["status"] for j in jobs} == {"scheduled"}
        seen = c.get(f"/api/v1/jobs/{jobs[-1]['id']}").json()
        assert seen["waiting_reason"]["code"] == "scheduled", seen
        assert seen["waiting_reason"]["message"].startswith("Scheduled for "), seen
        assert 3.0 < seen["eta_seconds"] <= 4.0, seen
    wanted = {job["id"]: t for job, t in zip(jobs, times, strict=True)}
    wait_until(
        lambda: query(stack.db_url, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0] == 200,
        30,
        "all 200 delayed jobs to succeed",
    )
    started = dict(query(stack.db_url, "SELECT job_id, at FROM job_events WHERE type = 'started'"))
    # The executor's clock stamps `started`: the same machine's clock as the API's.
    late = [started[job_id] - run_at for job_id, run_at in wanted.items()]
    assert min(late) >= 0, f"a job started {-min(late) * 1000:.1f} ms before its run_at"
    assert _p(late, 0.99) <= 0.1, f"p99 {_p(late, 0.99) * 1000:.1f} ms after run_at"


def test_a_scheduled_job_cancels_survives_an_api_crash_and_retries_with_a_delay(stack):
    api = stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        doomed = c.post("/api/v1/jobs", json={"type": "noop", "delay_s": 60}).json()
        later = c.post("/api/v1/jobs", json={"type": "noop", "delay_s": 1.5}).json()
        assert (doomed["status"], later["status"]) == ("scheduled", "scheduled")
        gates = next(ch for ch in c.get("/api/v1/doctor").json()["checks"] if ch["name"] == "gates")
        assert gates["ok"] and gates["detail"].startswith("2 scheduled; next scheduled at "), gates
        cancelled = c.post(f"/api/v1/jobs/{doomed['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled", cancelled.text
    # The api dies before `later` is due and comes back after: the gate is in the database.
    api.kill9()
    time.sleep(2.0)
    stack.start_api()
    done = stack.wait_status(later["id"], "succeeded", timeout=20)
    assert _ts(done["started_at"]) >= _ts(done["run_at"]) >= _ts(done["created_at"]) + 1.5
    with stack.http() as c:
        # The cancelled one never started; retried with a delay it waits again, then runs.
        started = query(
            stack.db_url,
            f"SELECT count(*) FROM job_events WHERE job_id = '{doomed['id']}' AND type = 'started'",
        )
        assert started[0][0] == 0
        again = c.post(f"/api/v1/jobs/{doomed['id']}/retry", params={"delay_s": 1})
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "scheduled"
        retried_at = time.time()
    done = stack.wait_status(doomed["id"], "succeeded", timeout=20)
    assert done["generation"] == 1 and _ts(done["started_at"]) >= retried_at + 0.9


@pytest.mark.one_database("sqlite", why="input checks that refuse before any SQL")
def test_bad_times_are_422s_naming_the_field_and_store_nothing(stack):
    stack.start_api()
    with stack.http() as c:
        bad = [
            ({"type": "noop", "run_at": "2030-01-01T10:00:00"}, "run_at"),  # no offset
            ({"type": "noop", "run_at": "tomorrow"}, "run_at"),
            ({"type": "noop", "delay_s": 0}, "delay_s"),
            ({"type": "noop", "delay_s": 5, "run_at": "2030-01-01T10:00:00Z"}, "run_at or delay_s"),
        ]
        for body, field in bad:
            answer = c.post("/api/v1/jobs", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert field in answer.text, (body, answer.text)
        retry = c.post("/api/v1/jobs/01J00000000000000000000000/retry", params={"delay_s": -1})
        assert retry.status_code == 422 and "delay_s" in retry.text
    assert query(stack.db_url, "SELECT count(*) FROM jobs")[0][0] == 0
