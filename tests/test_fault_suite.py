"""Faults under load: executors killed, nats-server restarted, a full LOGS stream, and a soak run.

Each ends with the same invariants (tests/invariants.py): every accepted job ends once in a
final state, the database holds exactly the jobs submitted, and no outcome is projected twice.
"""

import random
import time

import pytest

from .invariants import assert_invariants, wait_all_final


def submit_many(c, specs: list[dict], chunk: int = 500) -> set[str]:
    ids: set[str] = set()
    for i in range(0, len(specs), chunk):
        r = c.post("/api/v1/jobs:batch", json={"jobs": specs[i : i + chunk]})
        assert r.status_code == 201, r.text
        ids |= {j["id"] for j in r.json()["jobs"]}
    return ids


def test_kill_executors_and_restart_nats_under_load(own_nats_stack):
    stack = own_nats_stack
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "3"
    stack.start_api()
    workers = [stack.start_executor(handlers="handlers_for_tests", slots=16) for _ in range(2)]
    rng = random.Random(1)
    specs = [
        {
            "type": "chaos",
            "payload": {"sleep": rng.uniform(0.005, 0.05)},
            "backoff": {"base_s": 0.1, "max_s": 0.5},
        }
        for _ in range(1500)
    ]
    with stack.http() as c:
        ids = submit_many(c, specs[:1000])
        for _ in range(3):  # kill -9 a busy executor, three times, replacing it each time
            time.sleep(0.7)
            victim = workers.pop(0)
            victim.kill9()
            workers.append(stack.start_executor(handlers="handlers_for_tests", slots=16))
        stack.nats.kill()  # nats-server crash; file storage keeps the streams
        time.sleep(1)
        stack.nats.start()
        deadline = time.monotonic() + 30
        while True:
            r = c.post("/api/v1/jobs:batch", json={"jobs": specs[1000:]})
            if r.status_code == 201:
                ids |= {j["id"] for j in r.json()["jobs"]}
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.5)
    counts = wait_all_final(stack.db_url, len(ids), timeout=180)
    assert counts == {"succeeded": len(ids)}, counts
    assert_invariants(stack.db_url, ids)
    assert all(w.alive() for w in workers) and stack.api.alive()  # recovered without a restart


def test_full_logs_stream_drops_oldest_lines_not_jobs(stack):
    stack.extra_env["TASKYARD_NATS_LOGS_MAX_BYTES"] = "200000"
    stack.start_api()
    stack.start_executor()
    script = "for i in $(seq 1 5000); do echo line-$i-padding-padding-padding; done"
    with stack.http() as c:
        jobs = [
            c.post(
                "/api/v1/jobs", json={"type": "shell", "payload": {"command": script, "shell": True}}
            ).json()
            for _ in range(3)
        ]
        for job in jobs:
            assert stack.wait_status(job["id"], "succeeded", timeout=60)["result"]["exit_code"] == 0
        lines = c.get(f"/api/v1/jobs/{jobs[-1]['id']}/logs", params={"limit": 10000}).json()["lines"]
    # The stream kept its newest ~200 kB: the last job's tail is there, the first lines are gone.
    assert lines and lines[-1]["line"].startswith("line-5000-") and len(lines) < 5000


@pytest.mark.slow
def test_soak_random_failures_timeouts_and_cancels(stack):
    """Bounded soak: ~60 s of mixed work, then the invariants."""
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "5"
    stack.start_api()
    for _ in range(2):
        stack.start_executor(handlers="handlers_for_tests", slots=32)
    rng = random.Random(42)
    ids: set[str] = set()
    cancelled: set[str] = set()
    t_end = time.monotonic() + 45
    with stack.http() as c:
        while time.monotonic() < t_end and len(ids) < 6000:
            specs = []
            for _ in range(200):
                kind = rng.random()
                if kind < 0.1:  # times out every attempt
                    specs.append(
                        {
                            "type": "sleep",
                            "payload": {"seconds": 2},
                            "timeout_s": 0.2,
                            "max_attempts": 2,
                            "backoff": {"base_s": 0.05},
                        }
                    )
                elif kind < 0.3:  # fails a few times, then succeeds or dies
                    specs.append(
                        {
                            "type": "chaos",
                            "payload": {"fail_attempts": rng.randint(1, 3)},
                            "max_attempts": 3,
                            "backoff": {"base_s": 0.05, "max_s": 0.2},
                        }
                    )
                else:
                    specs.append({"type": "chaos", "payload": {"sleep": rng.uniform(0.001, 0.03)}})
            batch = submit_many(c, specs)
            ids |= batch
            for job_id in rng.sample(sorted(batch), 5):
                if c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200:
                    cancelled.add(job_id)
            time.sleep(0.5)
    counts = wait_all_final(stack.db_url, len(ids), timeout=180)
    assert_invariants(stack.db_url, ids, allow_cancel_race=True)
    assert counts.get("cancelled", 0) >= len(cancelled) * 0.5 and counts["succeeded"] > len(ids) * 0.5, counts
