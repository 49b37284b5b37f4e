"""REST API behaviour: validation, auth, batch, listing, cancel, retry, logs."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import create_key
from .stack import run_async, wait_until


def count_jobs(c: httpx.Client) -> int:
    return len(c.get("/api/v1/jobs", params={"limit": 500}).json()["jobs"])


def test_bad_input_is_a_clear_4xx_naming_the_field_and_writes_nothing(stack):
    stack.start_api(TASKYARD_API_MAX_PAYLOAD_BYTES="1000")
    cases = [
        ({"type": "noop", "priority": "urgent"}, 422, "priority"),
        ({"type": "noop", "timeout_s": 0}, 422, "timeout_s"),
        ({"type": "noop", "timeout_s": -5}, 422, "timeout_s"),
        ({"type": "no such type!"}, 422, "type"),
        ({"type": "noop", "queue": "Bad.Queue"}, 422, "queue"),
        ({"type": "noop", "max_attempts": 0}, 422, "max_attempts"),
        ({"type": "noop", "payload": "x" * 2000}, 413, "payload"),
        ({"type": "noop", "labels": {"a b": "c"}}, 422, "labels"),
        ({"type": "noop", "surprise": 1}, 422, "surprise"),
        ({"payload": {}}, 422, "type"),
    ]
    with stack.http() as c:
        for body, status, field in cases:
            r = c.post("/api/v1/jobs", json=body)
            assert r.status_code == status, (body, r.text)
            assert field in r.json()["detail"], (body, r.text)
        deep = {"a": None}
        for _ in range(40):
            deep = {"a": deep}
        r = c.post("/api/v1/jobs", json={"type": "noop", "payload": deep})
        assert r.status_code == 422 and "payload" in r.json()["detail"]
        r = c.post("/api/v1/jobs", content=b'{"type": "noop",', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
        r = c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}, {"type": "noop", "priority": "x"}]})
        assert r.status_code == 422 and "jobs[1].priority" in r.json()["detail"]
        assert c.get("/api/v1/jobs/NOPE").status_code == 404
        assert c.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
        assert count_jobs(c) == 0


def test_roles_and_key_lifecycle(stack):
    stack.start_api(TASKYARD_API_KEY_CACHE_S="0")
    viewer = create_key(stack.db_url, "viewer", "viewer")
    alice = create_key(stack.db_url, "alice", "submitter")
    bob = create_key(stack.db_url, "bob", "submitter")
    assert httpx.get(f"{stack.api.url}/api/v1/jobs").status_code == 401
    with stack.http("ty_bogus_key") as c:
        assert c.get("/api/v1/jobs").status_code == 401
    with stack.http(viewer) as c:
        assert c.get("/api/v1/jobs").status_code == 200
        r = c.post("/api/v1/jobs", json={"type": "noop"})
        assert r.status_code == 403 and "submitter" in r.json()["detail"]
    with stack.http(alice) as c:
        job = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        assert c.get("/api/v1/keys").status_code == 403
    with stack.http(bob) as c:
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 403
    with stack.http() as admin:
        created = admin.post("/api/v1/keys", json={"name": "ci", "role": "viewer"}).json()
        assert created["key"].startswith("ty_")
        listed = admin.get("/api/v1/keys").json()["keys"]
        assert "key" not in listed[0] and {k["name"] for k in listed} >= {"admin", "ci", "alice"}
        assert admin.delete(f"/api/v1/keys/{created['id']}").status_code == 204
    with stack.http(created["key"]) as c:
        assert c.get("/api/v1/jobs").status_code == 401

    async def stored_hashes():
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(stack.db_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
        await engine.dispose()
        return rows

    hashes = run_async(stored_hashes())
    assert created["key"] not in hashes and all(len(h) == 64 for h in hashes)


def test_batch_list_filter_and_cursor_pagination(stack):
    stack.start_api()
    with stack.http() as c:
        jobs = [
            {"type": "noop", "queue": "q1" if i % 2 else "q2", "labels": {"n": str(i % 3)}}
            for i in range(120)
        ]
        r = c.post("/api/v1/jobs:batch", json={"jobs": jobs})
        assert r.status_code == 201
        created = r.json()["jobs"]
        assert len(created) == 120 and all(j["status"] == "queued" for j in created)
        seen, cursor = [], None
        while True:
            page = c.get(
                "/api/v1/jobs", params={"queue": "q1", "limit": 7, **({"cursor": cursor} if cursor else {})}
            )
            body = page.json()
            seen += [j["id"] for j in body["jobs"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        expected = sorted((j["id"] for j in created if j["queue"] == "q1"), reverse=True)
        assert seen == expected
        labelled = c.get("/api/v1/jobs", params={"label": "n=2", "limit": 500}).json()["jobs"]
        assert len(labelled) == 40
        assert c.get("/api/v1/jobs", params={"status": "succeeded"}).json()["jobs"] == []
        future = c.get("/api/v1/jobs", params={"created_after": "2099-01-01T00:00:00Z"}).json()["jobs"]
        assert future == []


def test_cancel_queued_and_running_jobs(stack):
    stack.start_api()
    with stack.http() as c:
        queued = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        r = c.post(f"/api/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.post(f"/api/v1/jobs/{queued['id']}/cancel").status_code == 409
        stack.start_executor()
        cmd = ["sh", "-c", "echo started; sleep 60 & wait"]
        running = c.post("/api/v1/jobs", json={"type": "shell", "payload": {"command": cmd}}).json()
        stack.wait_status(running["id"], "running")
        time.sleep(0.3)
        assert c.post(f"/api/v1/jobs/{running['id']}/cancel").status_code == 200
        after = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(after["id"], "succeeded")  # the slot came back
        time.sleep(0.5)
        job = c.get(f"/api/v1/jobs/{running['id']}").json()
        assert job["status"] == "cancelled"
        # The cancelled queued job never ran.
        assert [e["type"] for e in c.get(f"/api/v1/jobs/{queued['id']}").json()["timeline"]] == [
            "queued",
            "cancelled",
        ]


def test_retry_a_failed_job(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        job = c.post(
            "/api/v1/jobs", json={"type": "shell", "payload": {"command": ["false"]}, "max_attempts": 1}
        )
        job = job.json()
        dead = stack.wait_status(job["id"], "dead")
        assert dead["error"]["exit_code"] == 1
        assert c.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 200
        again = stack.wait_status(job["id"], {"dead", "failed"}, timeout=30)
        assert again["generation"] == 1
        assert [e["type"] for e in again["timeline"]].count("started") == 2
        ok = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(ok["id"], "succeeded")
        r = c.post(f"/api/v1/jobs/{ok['id']}/retry")
        assert r.status_code == 409 and "succeeded" in r.json()["detail"]


@pytest.mark.one_database("sqlite", why="logs live in a JetStream stream")
def test_logs_follow_streams_live_lines_then_ends(stack):
    stack.start_api()
    stack.start_executor()
    script = "for i in 1 2 3; do echo line-$i; sleep 0.4; done"
    with stack.http() as c:
        job = c.post(
            "/api/v1/jobs", json={"type": "shell", "payload": {"command": script, "shell": True}}
        ).json()
        received, arrival = [], []
        with c.stream("GET", f"/api/v1/jobs/{job['id']}/logs/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for raw in r.iter_lines():
                if raw.startswith("event: "):
                    event = raw[7:]
                elif raw.startswith("data: "):
                    data = json.loads(raw[6:])
                    if event == "end":
                        assert data["status"] == "succeeded"
                        break
                    received.append(data["line"])
                    arrival.append(time.monotonic())
    assert received == ["line-1", "line-2", "line-3"]
    assert arrival[2] - arrival[0] > 0.5  # lines arrived as they were written, not all at the end


@pytest.mark.one_database("sqlite", why="logs live in a JetStream stream")
def test_many_log_reads_leave_no_consumer_behind(stack):
    # A consumer per read lived 30 s on the server: ~1,000 reads in that time hit JetStream's limit.
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        job = c.post("/api/v1/jobs", json={"type": "shell", "payload": {"command": ["seq", "3"]}}).json()
        stack.wait_status(job["id"], "succeeded")
        for _ in range(1200):
            r = c.get(f"/api/v1/jobs/{job['id']}/logs")
            assert r.status_code == 200 and [x["line"] for x in r.json()["lines"]] == ["1", "2", "3"], r.text
        page = c.get(f"/api/v1/jobs/{job['id']}/logs", params={"limit": 2}).json()
        rest = c.get(f"/api/v1/jobs/{job['id']}/logs", params={"after": page["next"]}).json()
        assert [x["line"] for x in page["lines"] + rest["lines"]] == ["1", "2", "3"]

    async def consumers_on_logs() -> int:
        import nats

        nc = await nats.connect(stack.nats.url)
        info = await nc.jetstream().stream_info(f"{stack.prefix.upper()}_LOGS")
        await nc.close()
        return info.state.consumer_count

    assert run_async(consumers_on_logs()) == 0


def test_head_revision_is_alembics_head():
    from alembic.script import ScriptDirectory

    from taskyard_api.migrate import HEAD_REVISION, alembic_config

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == HEAD_REVISION


@pytest.mark.one_database("sqlite", why="readiness on a fresh SQLite file")
def test_readiness_says_not_migrated_until_the_migration_runs(stack, tmp_path):
    if not stack.db_url.startswith("sqlite"):
        pytest.skip("one database is enough for readiness")
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    api = stack.start_api(wait=False, TASKYARD_DB_URL=url)

    def readyz() -> tuple[int, str]:
        try:
            r = httpx.get(f"{api.url}/readyz", timeout=2)
        except httpx.HTTPError as exc:
            return 0, str(exc)
        return r.status_code, r.text

    wait_until(lambda: readyz()[0] == 503, timeout=30, what="the api to answer /readyz")
    assert "not migrated" in readyz()[1]
    env = {**os.environ, "TASKYARD_DB_URL": url}
    subprocess.run(
        [sys.executable, "-m", "taskyard_api", "migrate"], env=env, check=True, capture_output=True
    )
    wait_until(lambda: readyz()[0] == 200, timeout=30, what="readiness after the migration")


def test_result_too_large_is_a_clear_failure(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", TASKYARD_EXECUTOR_MAX_RESULT_BYTES="1000")
    with stack.http() as c:
        job = c.post("/api/v1/jobs", json={"type": "big_result", "payload": {"bytes": 5000}}).json()
    failed = stack.wait_status(job["id"], "failed")
    assert failed["error"]["type"] == "ResultTooLarge" and "limit is 1000" in failed["error"]["message"]


def test_create_key_command_prints_a_working_key(stack):
    import os
    import subprocess
    import sys

    stack.start_api()
    out = subprocess.run(
        [sys.executable, "-m", "taskyard_api", "create-key", "ops", "--role", "viewer"],
        env={**os.environ, "TASKYARD_DB_URL": stack.db_url},
        capture_output=True,
        text=True,
        check=True,
    )
    created = json.loads(out.stdout)
    assert created["role"] == "viewer" and created["name"] == "ops"
    with stack.http(created["key"]) as c:
        assert c.get("/api/v1/whoami").json()["role"] == "viewer"


def test_bootstrap_admin_key_and_production_guard(stack):
    key = "ty_bootstrap_" + "k3y-" * 10
    stack.start_api(TASKYARD_API_BOOTSTRAP_ADMIN_KEY=key)
    with stack.http(key) as c:
        assert c.get("/api/v1/whoami").json() == {
            "id": c.get("/api/v1/whoami").json()["id"],
            "name": "bootstrap-admin",
            "role": "admin",
        }
    stack.api.terminate()
    stack.start_api(TASKYARD_API_BOOTSTRAP_ADMIN_KEY=key)  # a restart does not add it twice
    with stack.http() as c:
        assert [k["name"] for k in c.get("/api/v1/keys").json()["keys"]].count("bootstrap-admin") == 1
    refused = stack.start_api(
        wait=False, TASKYARD_API_ENVIRONMENT="production", TASKYARD_API_BOOTSTRAP_ADMIN_KEY="changeme"
    )
    assert refused.process.wait(60) != 0
    out = refused.output()
    if stack.db_url.startswith("sqlite"):
        assert "TASKYARD_DB_URL is SQLite" in out
    assert "BOOTSTRAP_ADMIN_KEY must be set" in out


def test_a_queue_past_the_install_limit_is_refused_and_nothing_is_written(stack):
    # nats-server 2.15 caps a stream at 1,000 consumers unless it sets its own max_consumers:
    # before JOBS set one from TASKYARD_NATS_MAX_QUEUES, the 334th queue's jobs stayed `pending`.
    stack.extra_env["TASKYARD_NATS_MAX_QUEUES"] = "3"
    stack.start_api(TASKYARD_API_QUEUE_STATE_CACHE_S="0")
    with stack.http() as c:
        for queue in ("q1", "q2"):
            assert c.post("/api/v1/jobs", json={"type": "noop", "queue": queue}).status_code == 201
        r = c.post(
            "/api/v1/jobs:batch", json={"jobs": [{"type": "noop", "queue": q} for q in ("q1", "q3", "q4")]}
        )
        assert r.status_code == 409 and r.json()["detail"].startswith("jobs[2].queue: queue 'q4'"), r.text
        assert "TASKYARD_NATS_MAX_QUEUES" in r.json()["detail"]
        assert count_jobs(c) == 2
        assert c.post("/api/v1/jobs", json={"type": "noop", "queue": "q3"}).status_code == 201
        r = c.post("/api/v1/jobs", json={"type": "noop", "queue": "q4"})
        assert r.status_code == 409 and r.json()["detail"].startswith("queue: queue 'q4'"), r.text
        assert count_jobs(c) == 3
        assert {q["queue"] for q in c.get("/api/v1/queues").json()["queues"]} == {"q1", "q2", "q3"}
        stream = next(ch for ch in c.get("/api/v1/doctor").json()["checks"] if "JOBS" in ch["name"])
        assert stream["ok"], stream
    executor = stack.start_executor(queues="q5", wait=False)
    assert executor.process.wait(60) == 2
    assert "queue 'q5' would be one more than the 3 queues" in executor.output()
