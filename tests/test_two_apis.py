"""Two api processes on one database: what one answers, the other reads; projecting at once, they
lose no transition and store no timeline row twice."""

import concurrent.futures

import httpx
import pytest

from .invariants import assert_invariants, query, wait_all_final


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_job_submitted_on_one_api_reads_the_same_on_the_other(stack):
    first = stack.start_api()
    second = stack.start_api()
    with _client(first.url, stack.admin_key) as a, _client(second.url, stack.admin_key) as b:
        for _ in range(20):
            answer = a.post("/api/v1/jobs", json={"type": "noop"}).json()
            seen = b.get(f"/api/v1/jobs/{answer['id']}").json()
            assert (
                (seen["status"], seen["stream_seq"])
                == (answer["status"], answer["stream_seq"])
                == (
                    "queued",
                    answer["stream_seq"],
                )
            )
            assert answer["stream_seq"] is not None and seen["queue_position"] is not None, seen


def test_two_apis_submitting_and_projecting_at_once_lose_nothing(stack, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("several api processes share PostgreSQL (SQLite is the one-process default)")
    apis = [stack.start_api(), stack.start_api()]
    stack.start_executor(slots=8, handlers="handlers_for_tests")
    # Half the jobs fail once and are retried by the executor: four or five events each, projected
    # by whichever api's projector fetches them, often the two halves of one job on two processes.
    specs = [
        {"type": "flaky", "payload": {"succeed_on": 2}, "backoff": {"base_s": 0.05, "max_s": 0.1}}
        if i % 2
        else {"type": "noop"}
        for i in range(20)
    ]

    def submit_from(url: str) -> list[str]:
        with _client(url, stack.admin_key) as c:
            return [
                j["id"]
                for _ in range(10)
                for j in c.post("/api/v1/jobs:batch", json={"jobs": specs}).json()["jobs"]
            ]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        submitted = {i for ids in pool.map(submit_from, [api.url for api in apis]) for i in ids}
    assert len(submitted) == 400
    counts = wait_all_final(stack.db_url, 400, timeout=120)
    assert counts == {"succeeded": 400}
    assert_invariants(stack.db_url, submitted)
    # Every transition is on each job's timeline exactly once, and the row agrees with it.
    per_job = query(
        stack.db_url,
        "SELECT j.id, j.type, j.attempt, COUNT(*) FILTER (WHERE e.type = 'started'), "
        "COUNT(*) FILTER (WHERE e.type = 'succeeded'), COUNT(*) FILTER (WHERE e.type = 'queued'), "
        "COUNT(*) FILTER (WHERE e.type = 'retrying') "
        "FROM jobs j JOIN job_events e ON e.job_id = j.id GROUP BY j.id, j.type, j.attempt",
    )
    assert len(per_job) == 400
    for job_id, kind, attempt, started, succeeded, queued, retrying in per_job:
        expected = (2, 1, 1, 1) if kind == "flaky" else (1, 1, 1, 0)
        assert (started, succeeded, queued, retrying) == expected, job_id
        assert attempt == expected[0], job_id
    doubled = query(stack.db_url, "SELECT stream_seq FROM job_events GROUP BY stream_seq HAVING COUNT(*) > 1")
    assert [row for row in doubled if row[0] is not None] == []
    for api in apis:
        assert api.alive(), api.output()[-2000:]
