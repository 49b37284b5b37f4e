"""Dependencies going away: NATS restarted, the database unreachable. Nothing accepted is lost."""

import time

import pytest

from .stack import PG_URL, rename_db, wait_until


@pytest.mark.one_database("postgresql", why="a nats-server restart")
def test_nats_restart_mid_run_loses_nothing_and_services_recover(own_nats_stack):
    stack = own_nats_stack
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        before = c.post("/api/v1/jobs", json={"type": "async_sleep", "payload": {"seconds": 2}}).json()
        stack.wait_status(before["id"], "running")
        stack.nats.kill()
        ready = wait_until(
            lambda: c.get("/readyz").status_code == 503 and c.get("/readyz").json(), what="unready"
        )
        assert ready["checks"]["nats"] != "ok"
        r = c.post("/api/v1/jobs", json={"type": "noop"})
        assert r.status_code == 503 and "NATS unavailable" in r.json()["detail"]
        stack.nats.start()  # same port, same store: the streams survive
        wait_until(lambda: c.get("/readyz").status_code == 200, what="ready again")
        after = wait_until(
            lambda: (r := c.post("/api/v1/jobs", json={"type": "noop"})).status_code == 201 and r
        )
        stack.wait_status(after.json()["id"], "succeeded", timeout=30)
        # The job running during the outage finishes (or is redelivered and then finishes).
        done = stack.wait_status(before["id"], "succeeded", timeout=60)
        assert done["result"] == {"slept": 2}
        jobs = c.get("/api/v1/jobs").json()["jobs"]
        assert len(jobs) == 2  # the refused request wrote nothing


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TASKYARD_TEST_DATABASE_URL)")
@pytest.mark.one_database("postgresql", why="taking a database away is done on PostgreSQL")
def test_database_down_gives_503_and_recovers_without_losing_events(stack):
    if not stack.db_url.startswith("postgresql"):
        pytest.skip("taking a database away is exercised on PostgreSQL")
    name = stack.db_url.rsplit("/", 1)[1]
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        job = c.post("/api/v1/jobs", json={"type": "async_sleep", "payload": {"seconds": 2}}).json()
        stack.wait_status(job["id"], "running")
        rename_db(name, name + "_away")
        try:
            ready = wait_until(lambda: c.get("/readyz").status_code == 503 and c.get("/readyz").json())
            assert ready["checks"]["db"].startswith("unreachable")
            r = c.post("/api/v1/jobs", json={"type": "noop"})
            assert r.status_code == 503 and "database unavailable" in r.json()["detail"]
            time.sleep(2.5)  # the job finishes while the database is away; its events wait in EVENTS
        finally:
            rename_db(name + "_away", name)
        wait_until(lambda: c.get("/readyz").status_code == 200, what="ready again")
        done = stack.wait_status(job["id"], "succeeded", timeout=30)
        assert [e["type"] for e in done["timeline"]].count("succeeded") == 1
