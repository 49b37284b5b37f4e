"""Faults under load: executors killed, nats-server restarted, the database taken away for 10 s,
a full LOGS stream, and a soak run.

Each ends with the same invariants (tests/invariants.py): every accepted job ends once in a
final state, the database holds exactly the jobs submitted, and no outcome is projected twice.
"""

import json
import random
import threading
import time
from dataclasses import dataclass, field

import pytest

from .invariants import assert_invariants, query, wait_all_final
from .stack import PG_URL, rename_db, wait_until


def submit_many(c, specs: list[dict], chunk: int = 500) -> set[str]:
    ids: set[str] = set()
    for i in range(0, len(specs), chunk):
        r = c.post("/api/v1/jobs:batch", json={"jobs": specs[i : i + chunk]})
        assert r.status_code == 201, r.text
        ids |= {j["id"] for j in r.json()["jobs"]}
    return ids


@pytest.mark.one_database("postgresql", why="executor kills and a nats-server restart")
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
    print(f"\n3 executors killed -9 and nats-server killed/restarted under {len(ids)} jobs: final {counts}")


@dataclass
class Answer:
    """One submit request and what the api said to it."""

    req: str  # the `req` label on every job of the request: finds its rows, answered or not
    batch: bool
    size: int
    status: int | None = None  # None: no HTTP answer at all
    detail: str = ""
    ids: list[str] = field(default_factory=list)
    at: float = 0.0


def _submit_load(stack, worker: int, stop: threading.Event, answers: list[Answer]) -> None:
    """Single jobs and small batches until `stop`, as two kinds of client.

    A single job carries an idempotency key and is resubmitted with it after a refusal (every
    other request, oldest first, and all of them after `stop`) until accepted; 200 means an
    earlier try did get in. A batch has no key and is never retried.
    """
    rng = random.Random(worker)
    refused_singles: list[tuple[str, dict]] = []
    n = 0
    drain_until = None
    with stack.http() as c:
        while True:
            if stop.is_set():
                drain_until = drain_until or time.monotonic() + 60
                if not refused_singles or time.monotonic() > drain_until:
                    return
            if refused_singles and (stop.is_set() or rng.random() < 0.5):
                req, body = refused_singles.pop(0)
                size = 1
            else:
                n += 1
                req = f"w{worker}-{n}"
                size = 1 if rng.random() < 0.5 else rng.randint(2, 5)
                specs = [
                    {"type": "chaos", "payload": {"sleep": rng.uniform(0.005, 0.03)}, "labels": {"req": req}}
                    for _ in range(size)
                ]
                body = {**specs[0], "idempotency_key": req} if size == 1 else {"jobs": specs}
            answer = Answer(req, batch=size > 1, size=size)
            try:
                r = c.post("/api/v1/jobs" if size == 1 else "/api/v1/jobs:batch", json=body)
                answer.status = r.status_code
                data = r.json()
                if r.status_code in (200, 201):
                    answer.ids = [data["id"]] if size == 1 else [j["id"] for j in data["jobs"]]
                else:
                    answer.detail = str(data.get("detail"))
            except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                answer.detail = repr(exc)
            answer.at = time.monotonic()
            answers.append(answer)
            if size == 1 and answer.status not in (200, 201):
                refused_singles.append((req, body))
            time.sleep(0.05)


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (TASKYARD_TEST_DATABASE_URL)")
@pytest.mark.one_database("postgresql", why="taking a database away is done on PostgreSQL")
def test_database_down_10s_under_submit_load(stack):
    """The database goes away for 10 s while three clients keep submitting and an executor runs.

    Taking one PostgreSQL database away (connections cut, name gone) is the database being down
    for this api, without stopping a server other tests share. SQLite has no honest equivalent:
    a process with the file open keeps using it whatever happens to its name or mode.
    """
    if not stack.db_url.startswith("postgresql"):
        pytest.skip("taking a database away is exercised on PostgreSQL")
    name = stack.db_url.rsplit("/", 1)[1]
    t0 = time.monotonic()
    # Started side by side (each ensures the streams): start-up is most of the time on a busy box.
    api = stack.start_api(wait=False)
    executor = stack.start_executor(handlers="handlers_for_tests", slots=8, wait=False)
    stack.wait_ready(api)
    stack.wait_ready(executor)
    phases = {"services up": time.monotonic()}
    answers: list[Answer] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_submit_load, args=(stack, i, stop, answers), daemon=True) for i in range(3)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(a.status == 201 for a in answers) >= 20, 60, "20 accepted submits")
        time.sleep(2)
        cut_at = phases["cut"] = time.monotonic()
        rename_db(name, name + "_away")
        down_at = time.monotonic()
        try:
            with stack.http() as c:
                ready = wait_until(
                    lambda: (r := c.get("/readyz")).status_code == 503 and r.json(), 30, "api unready"
                )
            assert ready["checks"]["db"].startswith("unreachable"), ready
            time.sleep(max(0.0, down_at + 10 - time.monotonic()))
        finally:
            rename_db(name + "_away", name)
        up_at = phases["back"] = time.monotonic()
        with stack.http() as c:
            wait_until(lambda: c.get("/readyz").status_code == 200, 60, "api ready again")
        phases["ready"] = time.monotonic()
        # Submits keep going until a few seconds' worth has been accepted after the outage.
        wait_until(
            lambda: sum(a.status in (200, 201) and a.at > up_at for a in answers) >= 20,
            60,
            "20 accepted submits after the outage",
        )
        time.sleep(2)
    finally:
        stop.set()  # no new requests; refused single jobs are retried until accepted
        phases["stop"] = time.monotonic()
        for t in threads:
            t.join(90)
        phases["drained"] = time.monotonic()
    assert not any(t.is_alive() for t in threads)

    # Every answer is an acceptance or a clear 503 naming the database; nothing else.
    others = [a for a in answers if a.status not in (200, 201, 503)]
    assert not others, others[:5]
    refused = [a for a in answers if a.status == 503]
    assert refused and all(a.detail.startswith("database unavailable: ") for a in refused), refused[:5]
    assert all(a.at > cut_at for a in refused), "a 503 before the database was taken away"

    # Which rows each request left: accepted ones exactly their answered ids (a retried single job
    # one row, whatever its tries got); refused ones either nothing or rows that must still run once.
    rows: dict[str, set[str]] = {}
    for job_id, labels in query(stack.db_url, "SELECT id, labels FROM jobs"):
        labels = json.loads(labels) if isinstance(labels, str) else labels
        rows.setdefault(labels.get("req", "?"), set()).add(job_id)
    accepted = {a.req: a for a in answers if a.status in (200, 201)}
    sent = {a.req for a in answers}
    # The retrying client got every single job in once the database was back.
    assert {a.req for a in answers if not a.batch} <= set(accepted)
    assert set(rows) <= sent, f"rows of requests never sent: {sorted(set(rows) - sent)[:5]}"
    for req, a in accepted.items():
        assert rows.get(req) == set(a.ids), (req, a, rows.get(req))
    answered_ids = {job_id for a in accepted.values() for job_id in a.ids}
    left_by_refused = {req: ids for req, ids in rows.items() if req not in accepted}
    all_ids = answered_ids | {job_id for ids in left_by_refused.values() for job_id in ids}

    counts = wait_all_final(stack.db_url, len(all_ids), timeout=120)
    phases["all final"] = time.monotonic()
    assert counts == {"succeeded": len(all_ids)}, counts
    assert_invariants(stack.db_url, all_ids)
    runs = query(
        stack.db_url,
        "SELECT job_id, COUNT(*) FROM job_events WHERE type = 'started' GROUP BY job_id HAVING COUNT(*) > 1",
    )
    assert not runs, f"jobs run more than once: {runs[:5]}"
    succeeded = query(stack.db_url, "SELECT COUNT(*) FROM job_events WHERE type = 'succeeded'")[0][0]
    assert succeeded == len(all_ids)

    # Recovered without a restart: the same processes, and a new job runs.
    assert api.alive() and executor.alive() and len(stack.services) == 2
    with stack.http() as c:
        probe = c.post("/api/v1/jobs", json={"type": "chaos", "payload": {}})
        assert probe.status_code == 201, probe.text
        stack.wait_status(probe.json()["id"], "succeeded", timeout=60)
    tries = {kind: [a for a in refused if a.batch == kind] for kind in (False, True)}
    print(
        f"\ndatabase away {up_at - down_at:.1f} s; {len(answers)} requests: {len(accepted)} accepted "
        f"({sum(a.status == 200 for a in answers)} of them 200) = {len(answered_ids)} jobs; "
        f"{len(refused)} refused with 503 ({len(tries[False])} single-job tries of "
        f"{len({a.req for a in tries[False]})} jobs, {len(tries[True])} batches of "
        f"{sum(a.size for a in tries[True])} jobs), {len(sent - set(accepted))} never accepted; "
        f"{len(left_by_refused)} refused requests left rows ({len(all_ids) - len(answered_ids)} jobs); "
        f"final: {counts}; 503 details: {sorted({a.detail[:100] for a in refused})}; "
        f"at: {', '.join(f'{k} {v - t0:.1f} s' for k, v in phases.items())}, end {time.monotonic() - t0:.1f} s"
    )


@pytest.mark.one_database("sqlite", why="the JetStream logs stream's limits")
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


_DEAD_ERRORS = "SELECT error FROM jobs WHERE status = 'dead'"


@pytest.mark.slow
def test_soak_random_failures_timeouts_and_cancels(stack):
    """Bounded soak: up to 20,000 jobs of mixed work submitted within 60 s, then the invariants."""
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "5"
    stack.start_api()
    for _ in range(2):
        stack.start_executor(handlers="handlers_for_tests", slots=32)
    rng = random.Random(42)
    ids: set[str] = set()
    cancelled: set[str] = set()
    t_end = time.monotonic() + 60
    with stack.http() as c:
        while time.monotonic() < t_end and len(ids) < 20_000:
            specs = []
            for _ in range(400):
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
            time.sleep(0.3)
    counts = wait_all_final(stack.db_url, len(ids), timeout=180)
    assert_invariants(stack.db_url, ids, allow_cancel_race=True)
    assert counts.get("cancelled", 0) >= len(cancelled) * 0.5 and counts["succeeded"] > len(ids) * 0.5, counts
    # No worker was lost, so no job may end as if one had been (a failed journal read once did that).
    lost = query(stack.db_url, "SELECT COUNT(*) FROM job_events WHERE type = 'worker_lost'")
    errors = [e if isinstance(e, dict) else json.loads(e) for (e,) in query(stack.db_url, _DEAD_ERRORS)]
    assert lost == [(0,)] and not [e for e in errors if e["type"] == "WorkerLost"], errors[:3]
    print(f"\nsoak: {len(ids)} jobs, {len(cancelled)} cancel requests accepted; final {counts}")
