"""Concurrency keys, rate keys and a batch's `parallel`, on real processes (docs/gates.md)."""

import asyncio
import concurrent.futures
import json
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .invariants import query
from .stack import wait_until
from .test_cli import cli

HANDLERS = "handlers_for_tests"
PARKED = "parked"  # a queue nobody serves: a job there holds its key's place, queued


def _key(key: str, limit: int, strategy: str = "queue", group: str | None = None) -> dict:
    spec = {"key": key, "limit": limit, "strategy": strategy}
    return spec | ({"group": group} if group else {})


def _submit(c, **job) -> dict:
    r = c.post("/api/v1/jobs", json=job)
    assert r.status_code == 201, r.text
    return r.json()


def _overlap(log: Path, killed_at: float | None = None) -> int:
    """Most jobs between their start and end lines at once; runs cut short by a kill (a start and
    no end) end at `killed_at`."""
    marks = []
    for line in log.read_text().splitlines():
        kind, _job_id, at, _pid = line.split()
        marks.append((float(at), 1 if kind == "start" else -1))
    unmatched = sum(d for _, d in marks)
    if killed_at is not None:
        marks += [(killed_at, -1)] * unmatched
    most = now = 0
    for _, d in sorted(marks):
        now += d
        most = max(most, now)
    return most


def test_a_key_at_limit_3_never_runs_more_than_3_across_3_executors_and_a_kill_9(stack, tmp_path):
    """300 jobs of key `k`, limit 3, on 3 executors of 8 slots: sampled every 10 ms, at most 3 of
    `k` run; an executor killed with `k` jobs in hand frees their places once they are redelivered."""
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api()
    executors = [stack.start_executor(slots=8, handlers=HANDLERS) for _ in range(3)]
    log = tmp_path / "probe.log"
    samples: list[int] = []
    stop = threading.Event()

    async def sample_db() -> None:
        engine = create_async_engine(stack.db_url)
        sql = text("SELECT COUNT(*) FROM jobs WHERE concurrency_key = 'k' AND status = 'running'")
        try:
            async with engine.connect() as conn:
                while not stop.is_set():
                    samples.append((await conn.execute(sql)).scalar_one())
                    await conn.commit()
                    await asyncio.sleep(0.01)
        finally:
            await engine.dispose()

    def sample() -> None:
        asyncio.run(sample_db())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Every 50th job runs 2 s: the executor killed is one holding it, so it surely holds a place.
    jobs = [
        {"type": "key_probe", "payload": {"log": str(log), "seconds": 2.0 if i % 50 == 25 else 0.05},
         "concurrency": _key("k", 3)}
        for i in range(300)
    ]  # fmt: skip
    killed_at = None
    try:
        with stack.http() as c:
            r = c.post("/api/v1/jobs:batch", json={"jobs": jobs})
            assert r.status_code == 201, r.text
            statuses = [j["status"] for j in r.json()["jobs"]]
            assert statuses.count("queued") == 3 and statuses.count("throttled") == 297
            long_ids = {j["id"] for i, j in enumerate(r.json()["jobs"]) if i % 50 == 25}

            def long_holder() -> int | None:
                """The pid of the executor running a long job right now (a start, no end yet)."""
                if not log.exists():
                    return None
                runs: dict[str, tuple[str, int]] = {}
                for kind, job_id, _at, pid in (line.split() for line in log.read_text().splitlines()):
                    runs[job_id] = (kind, int(pid))
                return next((pid for i, (k, pid) in runs.items() if i in long_ids and k == "start"), None)

            wait_until(lambda: long_holder() is not None, 60, "a long job of `k` to start")
            holder = long_holder()
            victim = next(e for e in executors if e.process.pid == holder)
            victim.kill9()
            killed_at = time.time()
            waiting = c.get("/api/v1/jobs", params={"status": "throttled", "limit": 1}).json()["jobs"]
            if waiting:
                seen = c.get(f"/api/v1/jobs/{waiting[0]['id']}").json()["waiting_reason"]
                assert seen["code"] == "throttled" and "running for key `k`" in seen["message"], seen
            wait_until(
                lambda: (
                    query(stack.db_url, "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")[0][0] == 300
                ),
                120,
                "all 300 jobs to succeed",
            )
    finally:
        stop.set()
        sampler.join(5)
    assert samples and max(samples) <= 3, max(samples)
    assert len(samples) > 100
    assert _overlap(log, killed_at) <= 3
    # The killed worker's jobs were run again elsewhere (redelivered after ack_wait).
    lost = query(stack.db_url, "SELECT COUNT(DISTINCT job_id) FROM job_events WHERE type = 'worker_lost'")
    print(f"samples {len(samples)}, max {max(samples)}, worker_lost jobs {lost[0][0]}")
    assert lost[0][0] >= 1


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_a_rate_key_of_20_per_s_releases_200_jobs_in_10_s(stack):
    stack.start_api()
    stack.start_executor(slots=16)
    jobs = [{"type": "noop", "rate": {"key": "r20", "per_s": 20}} for _ in range(260)]
    with stack.http() as c:
        r = c.post("/api/v1/jobs:batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        time.sleep(3)
        waiting = c.get("/api/v1/jobs", params={"status": "throttled", "limit": 1}).json()["jobs"]
        reason = c.get(f"/api/v1/jobs/{waiting[0]['id']}").json()["waiting_reason"]
        assert reason["code"] == "throttled" and reason["message"].startswith(
            "rate `r20` 20/s; next release in "
        )
        assert reason["evidence"]["ahead"] >= 150
    time.sleep(8.5)
    rows = query(
        stack.db_url,
        "SELECT MIN(e.at) FROM job_events e JOIN jobs j ON j.id = e.job_id "
        "WHERE j.rate_key = 'r20' AND e.type = 'queued' GROUP BY e.job_id",
    )
    times = sorted(at for (at,) in rows)
    first = times[0]
    released = sum(1 for at in times if at < first + 10)
    print(f"released in 10 s: {released}")
    # Never faster than 20/s (+ the bucket's burst and one interval of a late timer: 205). Slower by
    # a few: a gate-timer fire later than one interval restarts the schedule (key_rules.Bucket.take:
    # no burst beyond `burst`), and on stop 29's slower machine PostgreSQL's rounds made 191-192 of
    # 200 in two CI runs (195-201 before); stop 31's machine, about half as fast again, 179 on
    # PostgreSQL (its gate timer late by more than an interval more often). Below 170 is a real
    # slowdown; the lost time is the limitation docs/gates.md states, not made up by a burst.
    assert 170 <= released <= 205, released


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_a_rate_keys_bucket_survives_an_api_restart(stack):
    """6/min: the first job goes at once, the second 10 s later, also across a kill -9 of the api
    (a bucket that restarted empty would release it as soon as the new api is up)."""
    stack.start_api()
    rate = {"key": "slow", "per_min": 6}
    with stack.http() as c:
        first = _submit(c, type="noop", queue=PARKED, rate=rate)
        second = _submit(c, type="noop", queue=PARKED, rate=rate)
        assert (first["status"], second["status"]) == ("queued", "throttled")
        reason = c.get(f"/api/v1/jobs/{second['id']}").json()["waiting_reason"]
        assert re.match(r"rate `slow` 6/min; next release in (9\.\d|10\.0) s; 0 ahead", reason["message"]), (
            reason
        )
    stack.api.kill9()
    stack.start_api()
    with stack.http() as c:
        time.sleep(2)
        assert c.get(f"/api/v1/jobs/{second['id']}").json()["status"] == "throttled"

    def queued_at() -> str | None:
        with stack.http() as c:
            timeline = c.get(f"/api/v1/jobs/{second['id']}").json()["timeline"]
        return next((e["at"] for e in timeline if e["type"] == "queued"), None)

    wait_until(lambda: queued_at() is not None, 20, "the second job's release on its timeline")
    at = queued_at()
    assert at is not None
    gap = _epoch(at) - _epoch(first["created_at"])
    assert 9.8 <= gap <= 11.5, gap


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_job_with_both_keys_waits_for_both(stack, tmp_path):
    """Concurrency limit 2 and 10/s on the same 20 jobs: never more than 2 run, never two
    released closer than the rate allows; each key admits what the other held back."""
    stack.start_api()
    stack.start_executor(slots=8, handlers=HANDLERS)
    log = tmp_path / "probe.log"
    both = {"concurrency": _key("both", 2), "rate": {"key": "both-rate", "per_s": 10}}
    jobs = [{"type": "key_probe", "payload": {"log": str(log), "seconds": 0.15}, **both} for _ in range(20)]
    with stack.http() as c:
        r = c.post("/api/v1/jobs:batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        for job in r.json()["jobs"]:
            stack.wait_status(job["id"], "succeeded", timeout=60)
    assert _overlap(log) <= 2
    rows = query(
        stack.db_url,
        "SELECT MIN(e.at) FROM job_events e JOIN jobs j ON j.id = e.job_id "
        "WHERE j.rate_key = 'both-rate' AND e.type = 'queued' GROUP BY e.job_id",
    )
    times = sorted(at for (at,) in rows)
    # Released at most 10/s: a job goes at its due time, or up to one interval later without moving
    # the next due time (key_rules.Bucket.take), so 11 consecutive releases span at least 10
    # intervals less one: 0.9 s.
    assert all(b - a >= 0.9 for a, b in zip(times, times[10:], strict=False)), times


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_round_robin_serves_the_second_tenant_within_the_firsts_first_6(stack, tmp_path):
    stack.start_api()
    stack.start_executor(slots=8, handlers=HANDLERS)
    log = tmp_path / "probe.log"

    def jobs(tenant: str, n: int) -> list[dict]:
        spec = _key(f"tenant:{tenant}", 2, "round_robin", group="tenants")
        return [
            {"type": "key_probe", "payload": {"log": str(log), "seconds": 0.05}, "concurrency": spec,
             "labels": {"tenant": tenant}}
            for _ in range(n)
        ]  # fmt: skip

    with stack.http() as c:
        a = c.post("/api/v1/jobs:batch", json={"jobs": jobs("A", 1000)})
        assert a.status_code == 201, a.text
        b = c.post("/api/v1/jobs:batch", json={"jobs": jobs("B", 3)})
        assert b.status_code == 201, b.text
        b_ids = {job["id"] for job in b.json()["jobs"]}
        for job_id in b_ids:
            stack.wait_status(job_id, "succeeded", timeout=60)
    starts = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]
    last_b = max(starts.index(job_id) for job_id in b_ids)
    a_before = sum(1 for job_id in starts[:last_b] if job_id not in b_ids)
    print(f"B's 3 started within A's first {a_before}")
    assert a_before <= 6, (a_before, starts[: last_b + 1])


def test_strategies_keep_latest_cancel_newest_cancel_in_progress_and_the_throttled_reason(stack):
    stack.start_api()
    with stack.http() as c:
        # keep_latest: one holds the key's place (queued on a queue nobody serves); 50 more come.
        holder = _submit(c, type="noop", queue=PARKED, concurrency=_key("kl", 1, "keep_latest"))
        assert holder["status"] == "queued"
        later = [
            _submit(c, type="noop", queue=PARKED, concurrency=_key("kl", 1, "keep_latest")) for _ in range(50)
        ]
        seen = [c.get(f"/api/v1/jobs/{job['id']}").json() for job in later]
        waiting = [job for job in seen if job["status"] == "throttled"]
        assert [job["id"] for job in waiting] == [later[-1]["id"]]
        cancelled = [job for job in seen if job["status"] == "cancelled"]
        assert len(cancelled) == 49
        for old, new in zip(seen[:-1], seen[1:], strict=True):
            assert old["error"]["message"].startswith(f"replaced by newer job {new['id']}"), old["error"]
        reason = waiting[0]["waiting_reason"]
        assert reason["code"] == "throttled"
        assert reason["message"] == "1/1 running for key `kl`; 0 ahead of you for this key."
        assert reason["evidence"] | {"group": None} == {
            "key": "kl", "limit": 1, "holding": 1, "ahead": 0, "group": None, "kind": "concurrency"
        }  # fmt: skip

        # queue: positions within the key, priority first.
        first = _submit(c, type="noop", queue=PARKED, concurrency=_key("q", 2))
        _submit(c, type="noop", queue=PARKED, concurrency=_key("q", 2))
        low = _submit(c, type="noop", queue=PARKED, priority="low", concurrency=_key("q", 2))
        normal = [_submit(c, type="noop", queue=PARKED, concurrency=_key("q", 2)) for _ in range(3)]
        assert first["status"] == "queued" and low["status"] == "throttled"
        assert "3 ahead of you" in c.get(f"/api/v1/jobs/{low['id']}").json()["waiting_reason"]["message"]
        assert (
            "2/2 running for key `q`; 1 ahead"
            in c.get(f"/api/v1/jobs/{normal[1]['id']}").json()["waiting_reason"]["message"]
        )
        doctor = {ch["name"]: ch for ch in c.get("/api/v1/doctor").json()["checks"]}
        assert doctor["key q"]["detail"] == "key q has 4 throttled jobs and limit 2", doctor.get("key q")
        shown = cli(stack, "status", low["id"])
        assert shown.returncode == 0 and "2/2 running for key `q`; 3 ahead of you" in shown.stdout, shown
        # A holder cancelled frees its place: the next in line (normal[0]) is admitted at once.
        c.post(f"/api/v1/jobs/{first['id']}/cancel")
        assert c.get(f"/api/v1/jobs/{normal[0]['id']}").json()["status"] == "queued"

        # cancel_newest: refused when full (stored cancelled, with why).
        _submit(c, type="noop", queue=PARKED, concurrency=_key("cn", 1, "cancel_newest"))
        refused = _submit(c, type="noop", queue=PARKED, concurrency=_key("cn", 1, "cancel_newest"))
        refused = c.get(f"/api/v1/jobs/{refused['id']}").json()
        assert refused["status"] == "cancelled"
        assert "is full (1/1 running); cancel_newest refuses new jobs" in refused["error"]["message"]

        # cancel_in_progress: the new one takes the holder's place.
        old = _submit(c, type="noop", queue=PARKED, concurrency=_key("ci", 1, "cancel_in_progress"))
        new = _submit(c, type="noop", queue=PARKED, concurrency=_key("ci", 1, "cancel_in_progress"))
        assert new["status"] == "queued", new
        old = c.get(f"/api/v1/jobs/{old['id']}").json()
        assert old["status"] == "cancelled" and new["id"] in old["error"]["message"]
        metrics = c.get("/metrics").text
        assert 'taskyard_api_gate_admissions_total{kind="concurrency"}' in metrics
        assert 'taskyard_api_gate_key_cancels_total{strategy="keep_latest"} 49.0' in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "noop", "concurrency": {"key": "k", "limit": 0}}, "concurrency.limit"),
        ({"type": "noop", "concurrency": {"key": "k" * 10_240, "limit": 1}}, "concurrency.key"),
        ({"type": "noop", "rate": {"key": "r", "per_s": 0}}, "rate.per_s"),
    ],
)
@pytest.mark.one_database("sqlite", why="input checks that refuse before any SQL")
def test_bad_keys_are_422s_naming_the_field_and_nothing_is_stored(stack, body, field):
    stack.start_api()
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert field in r.text, r.text
        r = c.post("/api/v1/batches", json={"jobs": [{"type": "noop"}], "parallel": 0})
        assert r.status_code == 422 and "parallel" in r.text, r.text
    assert query(stack.db_url, "SELECT COUNT(*) FROM jobs")[0][0] == 0


def test_a_batch_with_parallel_runs_at_most_n_members_at_once(stack, tmp_path):
    stack.start_api()
    stack.start_executor(slots=8, handlers=HANDLERS)
    log = tmp_path / "probe.log"
    members = [{"type": "key_probe", "payload": {"log": str(log), "seconds": 0.05}} for _ in range(30)]
    with stack.http() as c:
        r = c.post("/api/v1/batches", json={"jobs": members, "parallel": 2})
        assert r.status_code == 201, r.text
        batch_id = r.json()["batch_id"]
        assert {j["concurrency"]["key"] for j in r.json()["jobs"]} == {f"batch:{batch_id}"}
        wait_until(
            lambda: c.get(f"/api/v1/batches/{batch_id}").json()["counts"] == {"succeeded": 30},
            60,
            "the batch",
        )
        own = c.post(
            "/api/v1/batches", json={"jobs": [{"type": "noop", "concurrency": _key("x", 1)}], "parallel": 2}
        )
        assert own.status_code == 422 and "jobs[0].concurrency" in own.text, own.text
    assert _overlap(log) <= 2
    # The CLI's `batch run --parallel N` sends the same.
    for i in range(3):
        (tmp_path / f"in-{i}.txt").write_text("x")
    run = cli(
        stack, "batch", "run", "--glob", str(tmp_path / "in-*.txt"), "--parallel", "2", "--json", "--", "true"
    )
    assert run.returncode == 0, run.stderr
    created = json.loads(run.stdout)
    assert {j["concurrency"]["key"] for j in created["jobs"]} == {f"batch:{created['batch_id']}"}
    assert {j["concurrency"]["limit"] for j in created["jobs"]} == {2}


def test_configured_defaults_give_a_key_from_a_template_with_a_limit_per_key(stack):
    defaults = (
        '{"types": {"noop": {"concurrency": {"key": "tenant:{labels.tenant}", "limit": 1, '
        '"limits": {"tenant:premium": 3}}}}}'
    )
    stack.start_api(TASKYARD_API_GATE_DEFAULTS=defaults)
    with stack.http() as c:
        premium = [_submit(c, type="noop", queue=PARKED, labels={"tenant": "premium"}) for _ in range(4)]
        basic = [_submit(c, type="noop", queue=PARKED, labels={"tenant": "basic"}) for _ in range(2)]
        own = _submit(c, type="noop", queue=PARKED, labels={"tenant": "basic"}, concurrency=_key("mine", 5))
        untagged = _submit(c, type="noop", queue=PARKED)
    assert [j["status"] for j in premium] == ["queued"] * 3 + ["throttled"]
    assert premium[0]["concurrency"] == {
        "key": "tenant:premium",
        "limit": 3,
        "strategy": "queue",
        "group": None,
    }
    assert [j["status"] for j in basic] == ["queued", "throttled"]
    assert own["concurrency"]["key"] == "mine" and own["status"] == "queued"
    assert "concurrency" not in untagged and untagged["status"] == "queued"


@pytest.mark.one_database("postgresql", why="several api processes share PostgreSQL only")
def test_two_apis_admitting_one_key_at_once_never_pass_its_limit(stack, db_url):
    """100 submits of one key (limit 2) spread over two api processes at once: exactly 2 hold a
    place; 20 cancels of holders through both, at once: still exactly 2 (each freed place to one)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("several api processes share PostgreSQL (SQLite is the one-process default)")
    apis = [stack.start_api(), stack.start_api()]
    body = {"type": "noop", "queue": PARKED, "concurrency": _key("shared", 2)}
    clients = [
        httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30)
        for api in apis
    ]

    def holding() -> int:
        sql = "SELECT COUNT(*) FROM jobs WHERE concurrency_key = 'shared' AND status = 'queued'"
        return query(stack.db_url, sql)[0][0]

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda i: _submit(clients[i % 2], **body), range(100)))
        assert holding() == 2
        assert query(stack.db_url, "SELECT COUNT(*) FROM jobs WHERE status = 'throttled'")[0][0] == 98
        for _ in range(10):
            held = [r[0] for r in query(stack.db_url, "SELECT id FROM jobs WHERE concurrency_key = 'shared' "
                                                      "AND status = 'queued'")]  # fmt: skip
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda p: clients[p[0]].post(f"/api/v1/jobs/{p[1]}/cancel"), enumerate(held)))
            assert holding() == 2
    finally:
        for c in clients:
            c.close()
    assert len(jobs) == 100


def test_a_job_released_by_its_parent_into_a_keep_latest_key_cancels_the_older_one_on_its_timeline(stack):
    """The cancel happens in the projector's transaction (the parent's outcome releases the child):
    the replaced job's timeline still says `cancelled`, and why."""
    stack.start_api()
    stack.start_executor()
    key = _key("kl-settle", 1, "keep_latest")
    with stack.http() as c:
        _submit(c, type="noop", queue=PARKED, concurrency=key)  # holds the key's one place
        older = _submit(c, type="noop", queue=PARKED, concurrency=key)
        assert older["status"] == "throttled"
        batch = c.post(
            "/api/v1/jobs:batch",
            json={"jobs": [
                {"type": "noop", "name": "parent"},
                {"type": "noop", "queue": PARKED, "depends_on": ["parent"], "concurrency": key},
            ]},
        )  # fmt: skip
        assert batch.status_code == 201, batch.text
        newer = batch.json()["jobs"][1]
        stack.wait_status(newer["id"], "throttled")
        replaced = stack.wait_status(older["id"], "cancelled")
        assert f"replaced by newer job {newer['id']}" in replaced["error"]["message"], replaced["error"]

        def cancelled_on_timeline() -> bool:
            timeline = c.get(f"/api/v1/jobs/{older['id']}").json()["timeline"]
            return [e["data"].get("by") for e in timeline if e["type"] == "cancelled"] == ["concurrency key"]

        wait_until(cancelled_on_timeline, 10, "the replaced job's `cancelled` on its timeline")
