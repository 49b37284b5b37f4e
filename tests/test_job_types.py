"""Submit-time checks: built-in payloads are validated, other types must be advertised by a worker."""

import time

import httpx
import pytest

pytestmark = pytest.mark.one_database(
    "sqlite", why="payload checks and the registered-types bucket (NATS KV), before any SQL"
)

UNKNOWN_FLAKY = (
    "type: unknown job type 'flaky': not built-in (noop, sleep, shell, python, http) "
    "and no worker has registered it"
)


def count_jobs(c: httpx.Client) -> int:
    return len(c.get("/api/v1/jobs", params={"limit": 500}).json()["jobs"])


def test_bad_builtin_payload_is_a_422_naming_the_field_and_writes_nothing(stack):
    stack.start_api()
    cases = [
        ({"type": "shell", "payload": {}}, "payload.command"),
        ({"type": "shell", "payload": "ls"}, "payload must be a JSON object, got str"),
        ({"type": "sleep", "payload": {"seconds": "x"}}, "payload.seconds"),
        ({"type": "http", "payload": {"url": "ftp://x"}}, "payload.url"),
        ({"type": "python", "payload": {"script": "1", "path": "x.py"}}, "exactly one of script or path"),
    ]
    with stack.http() as c:
        for body, field in cases:
            r = c.post("/api/v1/jobs", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in r.json()["detail"], (body, r.text)
        batch = [
            {"type": "noop", "payload": "anything"},
            {"type": "sleep", "payload": {"seconds": -1}},
            {"type": "http", "payload": {"url": "http://x/", "method": "GET /"}},
        ]
        r = c.post("/api/v1/jobs:batch", json={"jobs": batch})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "jobs[1].payload.seconds" in detail and "jobs[2].payload.method" in detail, detail
        assert "jobs[0]" not in detail
        assert count_jobs(c) == 0
        good = c.post("/api/v1/jobs", json={"type": "sleep", "payload": {"seconds": 0}})
        assert good.status_code == 201, good.text


def test_unknown_type_is_rejected_until_a_worker_registers_it(stack):
    stack.start_api()
    body = {"type": "flaky", "payload": {"succeed_on": 1}}
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["detail"] == UNKNOWN_FLAKY, r.text
        r = c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}, body]})
        assert r.status_code == 422 and r.json()["detail"] == "jobs[1]." + UNKNOWN_FLAKY, r.text
        assert count_jobs(c) == 0

        worker = stack.start_executor(handlers="handlers_for_tests")
        # The API rescans the workers bucket at most every 2 s, so allow a little longer.
        deadline = time.monotonic() + 5
        while (r := c.post("/api/v1/jobs", json=body)).status_code == 422 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 201, r.text
        stack.wait_status(r.json()["id"], "succeeded")

        # A worker that has stopped still made the type known: its jobs wait for the next one.
        assert worker.terminate() == 0
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        assert c.post("/api/v1/jobs", json={"type": "never_registered"}).status_code == 422
