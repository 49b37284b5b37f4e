"""Time gates: how late a scheduled job starts, and what 100,000 waiting ones cost (figures).

One run starts its own nats-server, database, api and executors (bench/run.py's Stack) and
measures, each against a baseline taken in the same run:

1. due release: `run_at` → started, for jobs whose times are spread over a few seconds, beside
   submit → start of jobs with no time (the same rate, the same run);
2. submit → start p50 of ordinary jobs at 100/s, without and then with 100,000 scheduled jobs
   waiting (a day ahead), and the api's RSS with them stored.

Writes bench/results/timing-<time>.json.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gates import job, summary, wait_until  # noqa: E402
from run import RESULTS, Stack, epoch, log, rss_mib  # noqa: E402


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def _all_succeeded(c: httpx.AsyncClient, ids: list[str], timeout: float) -> list[dict]:
    async def done() -> bool:
        return all([(await job(c, i))["status"] == "succeeded" for i in ids[-20:]])

    await wait_until(done, timeout, "jobs to succeed")
    jobs = []
    for i in ids:
        seen = await job(c, i)
        if seen["status"] != "succeeded":
            await wait_until(lambda i=i: _succeeded(c, i), timeout, f"job {i} to succeed")
            seen = await job(c, i)
        jobs.append(seen)
    return jobs


async def _succeeded(c: httpx.AsyncClient, job_id: str) -> bool:
    return (await job(c, job_id))["status"] == "succeeded"


async def due_release(c: httpx.AsyncClient, n: int, spread_s: float) -> dict:
    """`n` jobs due over `spread_s` seconds (submitted 1 s ahead) vs `n` plain jobs at that rate."""
    start = time.time() + 1.0
    gap = spread_s / n
    body = {"jobs": [{"type": "noop", "run_at": _iso(start + i * gap)} for i in range(n)]}
    scheduled = (await c.post("/api/v1/jobs:batch", json=body)).json()["jobs"]
    plain_ids = []
    await asyncio.sleep(max(0.0, start + spread_s - time.time()) + 0.5)
    for _ in range(n):
        plain_ids.append((await c.post("/api/v1/jobs", json={"type": "noop"})).json()["id"])
        await asyncio.sleep(gap)
    late = [
        epoch(j["started_at"]) - epoch(j["run_at"])
        for j in await _all_succeeded(c, [j["id"] for j in scheduled], 60)
    ]
    plain = [epoch(j["started_at"]) - epoch(j["created_at"]) for j in await _all_succeeded(c, plain_ids, 60)]
    return {
        "due_to_started": summary(late),
        "baseline_submit_to_start": summary(plain),
        "early": sum(x < 0 for x in late),
    }


async def steady(c: httpx.AsyncClient, rate: float, seconds: float) -> dict:
    ids = []
    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        ids.append((await c.post("/api/v1/jobs", json={"type": "noop"})).json()["id"])
        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    jobs = await _all_succeeded(c, ids, 60)
    return summary([epoch(j["started_at"]) - epoch(j["created_at"]) for j in jobs])


async def many_scheduled(
    c: httpx.AsyncClient, stack: Stack, waiting: int, rate: float, seconds: float
) -> dict:
    without = await steady(c, rate, seconds)
    rss_before = rss_mib({"api": stack.pid("api")})["api"]
    later = _iso(time.time() + 86400)
    for _ in range(0, waiting, 500):
        r = await c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop", "run_at": later}] * 500})
        assert r.status_code == 201, r.text[:300]
    with_them = await steady(c, rate, seconds)
    return {
        "scheduled_waiting": waiting,
        "submit_to_start_without": without,
        "submit_to_start_with": with_them,
        "p50_ratio": round(with_them["p50_ms"] / without["p50_ms"], 3) if without["p50_ms"] else None,
        "api_rss_before_mib": rss_before,
        "api_rss_mib": rss_mib({"api": stack.pid("api")})["api"],
    }


async def measure(stack: Stack, args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=60) as c:
        await c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 100})  # warm-up
        log("due release")
        out = {"due": await due_release(c, args.due, args.spread)}
        log(f"{args.waiting:,} scheduled jobs waiting")
        out["waiting"] = await many_scheduled(c, stack, args.waiting, args.rate, args.seconds)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="postgresql+asyncpg://… (SQLite by default)")
    p.add_argument("--executors", type=int, default=2)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--due", type=int, default=300, help="scheduled jobs in the due-release row")
    p.add_argument("--spread", type=float, default=3.0, help="seconds their times spread over")
    p.add_argument("--waiting", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskyard-timing-"))
    stack = Stack(args, tmp)
    stack.nats.start()
    try:
        stack.make_db()
        stack.start_api()
        stack.start_executors()
        res = asyncio.run(measure(stack, args))
    finally:
        stack.stop()
        stack.drop_db()
    res["at"] = datetime.now(UTC).isoformat()
    due, wait = res["due"], res["waiting"]
    rows = [
        ("due release: run_at → started p50 / p99 (ms)",
         f"{due['due_to_started']['p50_ms']} / {due['due_to_started']['p99_ms']} ({due['early']} early)"),
        ("  baseline: submit → start of a job with no time p50 / p99 (ms)",
         f"{due['baseline_submit_to_start']['p50_ms']} / {due['baseline_submit_to_start']['p99_ms']}"),
        (f"submit → start p50 at {args.rate:g}/s without / with {args.waiting:,} scheduled (ms)",
         f"{wait['submit_to_start_without']['p50_ms']} / {wait['submit_to_start_with']['p50_ms']} = {wait['p50_ratio']}×"),
        (f"api RSS with {args.waiting:,} scheduled jobs stored (MiB)",
         f"{wait['api_rss_mib']} (before {wait['api_rss_before_mib']})"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name:<78} {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"timing-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
