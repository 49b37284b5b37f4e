"""The operator's console in the API: search, bulk actions by filter, rollup charts, queue pages."""

import time

import httpx

from .conftest import create_key
from .stack import wait_until


def _ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {j["id"] for j in r.json()["jobs"]}


def _dead_jobs(stack, c: httpx.Client, n: int, queue: str, kind: str = "always_fails") -> list[str]:
    """n jobs that reached `dead` through a real executor (one attempt each)."""
    ids: list[str] = []
    for start in range(0, n, 500):
        batch = [
            {"type": kind, "queue": queue, "max_attempts": 1, "payload": {"i": i}}
            for i in range(start, min(n, start + 500))
        ]
        r = c.post("/api/v1/jobs:batch", json={"jobs": batch})
        assert r.status_code == 201, r.text
        ids += [j["id"] for j in r.json()["jobs"]]

    def all_dead() -> bool:
        r = c.get("/api/v1/queues")
        assert r.status_code == 200, r.text
        counts = {q["queue"]: q["counts"]["1h"]["dead"] for q in r.json()["queues"]}
        return counts.get(queue, 0) >= n

    wait_until(all_dead, timeout=300, what=f"{n} dead jobs in {queue}")
    return ids


def test_search_by_id_prefix_error_payload_ranges_and_sort(stack):
    stack.start_api()
    stack.start_executor(queues="default,etl", handlers="handlers_for_tests")
    with stack.http() as c:
        ok = [
            c.post(
                "/api/v1/jobs", json={"type": "noop", "payload": {"customer": 42, "region": "eu", "n": i}}
            ).json()["id"]
            for i in range(3)
        ]
        other = c.post(
            "/api/v1/jobs", json={"type": "noop", "payload": {"customer": 7, "deep": {"a": 1}}}
        ).json()["id"]
        failing = c.post("/api/v1/jobs", json={"type": "refuses", "queue": "etl", "max_attempts": 1}).json()[
            "id"
        ]
        for job_id in [*ok, other, failing]:
            stack.wait_status(job_id, {"succeeded", "failed", "dead"})

        # id prefix: the API's own range scan, case-insensitive, no padding tricks.
        assert _ids(c.get("/api/v1/jobs", params={"id_prefix": ok[0][:26]})) == {ok[0]}
        assert ok[1] in _ids(c.get("/api/v1/jobs", params={"id_prefix": ok[1][:20].lower()}))
        assert _ids(c.get("/api/v1/jobs", params={"id_prefix": "ZZZZ"})) == set()
        # error text contains (type or message), case-insensitive.
        assert _ids(c.get("/api/v1/jobs", params={"error": "permanenterror"})) == {failing}
        assert _ids(c.get("/api/v1/jobs", params={"error": "do not retry"})) == {failing}
        assert _ids(c.get("/api/v1/jobs", params={"error": "100%_"})) == set()
        # payload containment (top-level keys on both databases).
        assert _ids(c.get("/api/v1/jobs", params={"payload": '{"customer": 42}'})) == set(ok)
        assert _ids(
            c.get("/api/v1/jobs", params={"payload": '{"customer": 42, "region": "eu", "n": 1}'})
        ) == {ok[1]}
        # In pages of 2 by finish time (on PostgreSQL: read among the ids the GIN index found).
        for sort in ("-finished_at", "created_at"):
            seen, cursor = [], None
            while True:
                params = {"payload": '{"customer": 42}', "sort": sort, "limit": 2}
                page = c.get(
                    "/api/v1/jobs", params={**params, **({"cursor": cursor} if cursor else {})}
                ).json()
                seen += page["jobs"]
                if not (cursor := page["next_cursor"]):
                    break
            key = sort.lstrip("-") if sort != "created_at" else "id"
            expected = sorted(seen, key=lambda j: (j[key], j["id"]), reverse=sort.startswith("-"))
            assert [j["id"] for j in seen] == [j["id"] for j in expected] and len(seen) == 3, sort
        assert _ids(c.get("/api/v1/jobs", params={"payload": '{"customer": "42"}'})) == set()
        # finished range and sorting by finish time, keyset pages over it.
        r = c.get("/api/v1/jobs", params={"finished_after": "2000-01-01", "sort": "-finished_at", "limit": 2})
        first = r.json()
        assert len(first["jobs"]) == 2 and first["next_cursor"]
        times = [j["finished_at"] for j in first["jobs"]]
        assert times == sorted(times, reverse=True)
        rest = c.get(
            "/api/v1/jobs",
            params={
                "finished_after": "2000-01-01",
                "sort": "-finished_at",
                "limit": 100,
                "cursor": first["next_cursor"],
            },
        ).json()["jobs"]
        seen = [j["id"] for j in first["jobs"]] + [j["id"] for j in rest]
        assert sorted(seen) == sorted([*ok, other, failing])
        assert rest[0]["finished_at"] <= times[-1]
        assert _ids(c.get("/api/v1/jobs", params={"finished_before": "2000-01-01"})) == set()
        queued = c.post("/api/v1/jobs", json={"type": "noop", "queue": "idle"}).json()["id"]
        # Sorting by a time lists only jobs that have it: the never-run job is not among them.
        assert queued not in _ids(c.get("/api/v1/jobs", params={"sort": "started_at", "limit": 500}))
        by_queue = c.get("/api/v1/jobs", params={"sort": "queue", "limit": 500}).json()["jobs"]
        assert [j["queue"] for j in by_queue] == sorted(j["queue"] for j in by_queue)
        # Several statuses (one index walk per status, merged): newest or oldest first, in pages of 2.
        for sort in ("-created_at", "created_at"):
            expected = sorted([*ok, other, failing, queued], reverse=sort.startswith("-"))
            seen, cursor = [], None
            while True:
                params = [("status", s) for s in ("succeeded", "queued", "failed", "dead")]
                params += [("sort", sort), ("limit", "2")] + ([("cursor", cursor)] if cursor else [])
                page = c.get("/api/v1/jobs", params=params).json()
                seen += [j["id"] for j in page["jobs"]]
                if not (cursor := page["next_cursor"]):
                    break
            assert seen == expected, sort


def test_bad_search_input_is_a_422_naming_the_field(stack):
    stack.start_api()
    cases = [
        ({"error": "x" * 10_000}, "error"),
        ({"payload": "{" * 3000}, "payload"),
        ({"created_after": "2026-13-01"}, "created_after"),
        ({"finished_before": "yesterday"}, "finished_before"),
        ({"created_after": "2026-02-01", "created_before": "2026-01-01"}, "created_before"),
        ({"sort": "owner_id"}, "sort"),
        ({"sort": "-payload"}, "sort"),
        ({"payload": "not json"}, "payload"),
        ({"payload": "[1, 2]"}, "payload"),
        ({"id_prefix": "01J-"}, "id_prefix"),
        ({"cursor": "garbage!"}, "cursor"),
    ]
    with stack.http() as c:
        for params, field in cases:
            r = c.get("/api/v1/jobs", params=params)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["detail"].startswith(field), (params, r.text)


def test_bulk_retry_by_filter_of_5000_dead_jobs_each_once_and_recorded(stack):
    stack.start_api()
    executor = stack.start_executor(queues="etl", slots=64, handlers="handlers_for_tests")
    viewer = create_key(stack.db_url, "watcher", "viewer")
    with stack.http() as c:
        c.timeout = httpx.Timeout(300)
        ids = _dead_jobs(stack, c, 5000, "etl")
        executor.terminate()  # the retried jobs stay queued: each must be queued exactly once
        flt = {"queue": "etl", "status": ["dead"], "error": "RuntimeError"}

        with stack.http(viewer) as v:
            r = v.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": flt})
            assert r.status_code == 403, r.text
            assert v.get("/api/v1/jobs", params={"queue": "etl"}).status_code == 200

        nothing = c.post(
            "/api/v1/jobs:bulk", json={"action": "retry", "filter": {**flt, "error": "NoSuchError"}}
        )
        assert (
            nothing.status_code == 200 and nothing.json()["matched"] == 0 and nothing.json()["changed"] == 0
        )
        assert "nothing changed" in nothing.json()["message"]

        dry = c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": flt, "dry_run": True}).json()
        assert dry == dry | {"matched": 5000, "changed": 0, "dry_run": True}
        assert c.get("/api/v1/jobs", params={"queue": "etl", "status": "dead", "limit": 1}).json()["jobs"]

        started = time.monotonic()
        done = c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": flt})
        took = time.monotonic() - started
        assert done.status_code == 200, done.text
        assert done.json() | {"took": took} == done.json() | {"matched": 5000, "changed": 5000, "took": took}
        # Every job is queued again as generation 1, and the queue holds exactly 5000 new messages.
        jobs, cursor = [], None
        while True:
            page = c.get(
                "/api/v1/jobs",
                params={"queue": "etl", "limit": 500, **({"cursor": cursor} if cursor else {})},
            ).json()
            jobs += page["jobs"]
            if not (cursor := page["next_cursor"]):
                break
        assert sorted(j["id"] for j in jobs) == sorted(ids)
        assert {(j["status"], j["generation"]) for j in jobs} == {("queued", 1)}
        wait_until(
            lambda: c.get("/api/v1/queues/etl").json()["depth"] == 5000,
            timeout=60,
            what="5000 queued messages",
        )
        # Who did it is on each job's timeline, once.
        for job_id in (ids[0], ids[2500], ids[-1]):
            timeline = c.get(f"/api/v1/jobs/{job_id}").json()["timeline"]
            marks = [e for e in timeline if e["type"] == "bulk_retry"]
            assert len(marks) == 1 and marks[0]["data"]["by"] == "admin", timeline
        # And once in the audit log, with what matched and changed.
        events = c.get("/api/v1/audit", params={"action": "jobs.bulk_retry", "outcome": "ok"}).json()[
            "events"
        ]
        assert [(e["actor"]["name"], e["detail"]["changed"]) for e in events] == [
            ("admin", 5000),
            ("admin", 0),
        ]
        # Again: nothing is dead any more, so nothing changes.
        again = c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": flt}).json()
        assert again["changed"] == 0 and again["matched"] == 0
        print(f"bulk retry of 5000 dead jobs: {took:.2f} s")


def test_bulk_cancel_and_discard_by_filter(stack):
    stack.start_api()
    with stack.http() as c:
        batch = [{"type": "noop", "queue": "later", "labels": {"batch": "b1"}} for _ in range(30)]
        ids = [j["id"] for j in c.post("/api/v1/jobs:batch", json={"jobs": batch}).json()["jobs"]]
        keep = c.post("/api/v1/jobs", json={"type": "noop", "queue": "later"}).json()["id"]
        r = c.post("/api/v1/jobs:bulk", json={"action": "cancel", "filter": {"label": ["batch=b1"]}}).json()
        assert (r["matched"], r["changed"]) == (30, 30)
        assert c.get(f"/api/v1/jobs/{keep}").json()["status"] == "queued"
        assert {c.get(f"/api/v1/jobs/{i}").json()["status"] for i in ids[:3]} == {"cancelled"}
        r = c.post("/api/v1/jobs:bulk", json={"action": "discard", "filter": {"queue": "later"}}).json()
        assert (r["matched"], r["changed"]) == (30, 30)  # the queued one is not final: kept
        assert c.get(f"/api/v1/jobs/{ids[0]}").status_code == 404
        assert c.get(f"/api/v1/jobs/{keep}").status_code == 200
        empty = c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": {}})
        assert empty.status_code == 422 and empty.json()["detail"].startswith("filter")
        bad = c.post("/api/v1/jobs:bulk", json={"action": "retry", "filter": {"payload": "nope"}})
        assert bad.status_code == 422 and "filter.payload" in bad.json()["detail"], bad.text


def test_stats_and_queue_counts_follow_finished_jobs(stack):
    stack.start_api()
    stack.start_executor(queues="etl", handlers="handlers_for_tests")
    with stack.http() as c:
        for kind in ("noop", "noop", "refuses"):
            job_id = c.post("/api/v1/jobs", json={"type": kind, "queue": "etl", "max_attempts": 1}).json()[
                "id"
            ]
            stack.wait_status(job_id, {"succeeded", "failed", "dead"})

        def counted() -> bool:
            buckets = c.get("/api/v1/stats", params={"window": "1h", "queue": "etl"}).json()["buckets"]
            return (
                sum(b["succeeded"] for b in buckets) == 2
                and sum(b["failed"] + b["dead"] for b in buckets) == 1
            )

        wait_until(counted, timeout=30, what="rollups of the finished jobs")
        stats = c.get("/api/v1/stats", params={"window": "1h", "queue": "etl"}).json()
        assert len(stats["buckets"]) == 60 and stats["bucket_s"] == 60
        assert sum(b["succeeded"] for b in stats["buckets"]) == 2
        assert sum(b["started"] for b in stats["buckets"]) == 3
        assert stats["failures_by_error"] == {"PermanentError": 1}
        assert any(b["wait_p95_s"] is not None for b in stats["buckets"])
        for window, bars in (("24h", 96), ("7d", 84)):
            assert len(c.get("/api/v1/stats", params={"window": window}).json()["buckets"]) == bars
        assert c.get("/api/v1/stats", params={"window": "2h"}).status_code == 422
        etl = c.get("/api/v1/queues/etl").json()
        assert etl["counts"]["1h"]["succeeded"] == 2 and etl["counts"]["24h"]["succeeded"] == 2
        assert sum(etl["counts"]["1h"].values()) == 3
        assert "depth_history" in etl and etl["workers"]
        assert c.get("/api/v1/queues/nosuchqueue").status_code == 404


def test_a_queue_is_listed_and_found_as_soon_as_its_first_job_is_stored(stack):
    # The api keeps its listing of JOBS' consumers for 0.5 s: read once just before, it did not
    # hold the queue that the next submit created, and GET /queues left it out for that long.
    stack.start_api()
    with stack.http() as c:
        assert "brand-new" not in {q["queue"] for q in c.get("/api/v1/queues").json()["queues"]}
        t0 = time.monotonic()
        assert c.post("/api/v1/jobs", json={"type": "noop", "queue": "brand-new"}).status_code == 201
        listed = {q["queue"] for q in c.get("/api/v1/queues").json()["queues"]}
        one = c.get("/api/v1/queues/brand-new")
        assert time.monotonic() - t0 < 0.5, "too slow to tell: the listing's cache ran out meanwhile"
        assert "brand-new" in listed
        assert one.status_code == 200 and one.json()["depth"] == 1, one.text
