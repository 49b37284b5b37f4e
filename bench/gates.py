"""Work made of many jobs: gate release latency, fan-out/fan-in, batch progress, memory (figures).

One run starts its own nats-server, database, api and executors (bench/run.py's Stack) and
measures, each against a baseline taken in the same run:

1. gate release: parent succeeded → child started (from the API's timelines), pairs submitted
   open loop at a low rate, beside the submit → start of a job with no parent;
2. a 1 → 998 → 1 workflow of noop jobs, end to end, against 1,000 independent noop jobs;
3. `GET /api/v1/batches/{id}` of a 10,000-member batch (progress, counts, failures), right after
   its submit and once its events are projected;
4. the api's RSS with a 10,000-node workflow and a 100,000-member batch in flight at once;
5. `keys`: a concurrency key at limit 1 over 1,000 noop jobs: previous job finished → next job
   started (the place a job frees is given to the next in the projector's transaction).

Writes bench/results/gates-<time>.json. `./taskw bench` runs it after the main bench.
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
from run import RESULTS, Stack, epoch, log, pct, rss_mib  # noqa: E402

PARKED = "parked"  # a queue nobody serves: jobs wait there for the memory figure
PARTS = ("release", "fan", "batch_get", "memory", "keys")


def summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2)}


async def wait_until(check, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {what} after {timeout}s")
        await asyncio.sleep(0.05)


async def job(c: httpx.AsyncClient, job_id: str) -> dict:
    return (await c.get(f"/api/v1/jobs/{job_id}")).json()


async def release_latency(c: httpx.AsyncClient, pairs: int, rate: float) -> dict:
    sent: list[tuple[str, str, str]] = []
    for _ in range(pairs):
        r = await c.post(
            "/api/v1/jobs:batch",
            json={"jobs": [{"type": "noop", "name": "p"}, {"type": "noop", "depends_on": ["p"]}]},
        )
        parent, child = r.json()["jobs"]
        lone = (await c.post("/api/v1/jobs", json={"type": "noop"})).json()
        sent.append((parent["id"], child["id"], lone["id"]))
        await asyncio.sleep(1 / rate)
    gate, plain = [], []
    for parent_id, child_id, lone_id in sent:

        async def done(i: str = child_id, j: str = lone_id) -> bool:
            return (await job(c, i))["status"] == "succeeded" and (await job(c, j))["status"] == "succeeded"

        await wait_until(done, 30, "pairs to finish")
        parent, child, lone = await job(c, parent_id), await job(c, child_id), await job(c, lone_id)
        gate.append(epoch(child["started_at"]) - epoch(parent["finished_at"]))
        plain.append(epoch(lone["started_at"]) - epoch(lone["created_at"]))
    return {"gate_release": summary(gate), "baseline_submit_to_start": summary(plain)}


async def fan_out_in(c: httpx.AsyncClient, width: int) -> dict:
    async def independent() -> float:
        t0 = time.perf_counter()
        ids = []
        for _ in range((width + 2) // 500 + 1):
            n = min(500, width + 2 - len(ids))
            if n <= 0:
                break
            r = await c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * n})
            ids.append(r.json()["batch_id"])

        async def all_done() -> bool:
            for batch_id in ids:
                b = (await c.get(f"/api/v1/batches/{batch_id}")).json()
                if b["done"] < b["total"]:
                    return False
            return True

        await wait_until(all_done, 300, "independent jobs")
        return time.perf_counter() - t0

    async def workflow() -> float:
        nodes = [{"id": "fan", "type": "noop"}]
        nodes += [{"id": f"m{i}", "type": "noop", "needs": ["fan"]} for i in range(width)]
        nodes += [{"id": "join", "type": "noop", "needs": [f"m{i}" for i in range(width)]}]
        t0 = time.perf_counter()
        r = await c.post("/api/v1/workflows", json={"nodes": nodes})
        join = next(n["job_id"] for n in r.json()["nodes"] if n["id"] == "join")

        async def ended() -> bool:  # the join ends last (polled like one job, not the whole DAG)
            return (await job(c, join))["status"] == "succeeded"

        await wait_until(ended, 300, "the fan-out/fan-in workflow")
        return time.perf_counter() - t0

    base = await independent()
    flow = await workflow()
    return {
        "jobs": width + 2,
        "independent_s": round(base, 3),
        "workflow_s": round(flow, 3),
        "ratio": round(flow / base, 3),
    }


async def batch_gets(c: httpx.AsyncClient, batch_id: str, members: int, gets: int) -> list[float]:
    times = []
    for _ in range(gets):
        t0 = time.perf_counter()
        answer = await c.get(f"/api/v1/batches/{batch_id}")
        times.append(time.perf_counter() - t0)
        assert answer.json()["total"] == members
    return times


async def batch_progress(c: httpx.AsyncClient, members: int, gets: int, cancelled: int = 100) -> dict:
    """GETs of a batch's progress twice: right after its submit, while the api projects the
    members' 10,000 `queued` events (the projector's transactions hold the api's event loop on
    SQLite, docs/performance.md), and once those are projected, with `cancelled` members ended
    (a failure group with examples to find)."""
    r = await c.post(
        "/api/v1/batches", json={"jobs": [{"type": "noop", "queue": PARKED}] * members}, timeout=300
    )
    assert r.status_code == 201, r.text[:300]
    batch_id, jobs = r.json()["batch_id"], r.json()["jobs"]
    burst = await batch_gets(c, batch_id, members, gets)

    async def projected() -> bool:  # the last member's `queued` is on its timeline
        return "queued" in [e["type"] for e in (await job(c, jobs[-1]["id"]))["timeline"]]

    await wait_until(projected, 120, "the members' queued events to be projected")
    for member in jobs[:: members // cancelled][:cancelled]:
        await c.post(f"/api/v1/jobs/{member['id']}/cancel")
    settled = await batch_gets(c, batch_id, members, gets)
    answer = (await c.get(f"/api/v1/batches/{batch_id}")).json()
    assert sum(g["count"] for g in answer["failures"]) == cancelled, answer["failures"]
    return {"members": members, "cancelled": cancelled, "burst": summary(burst), **summary(settled)}


async def memory(c: httpx.AsyncClient, stack: Stack, nodes: int, members: int) -> dict:
    before = rss_mib({"api": stack.pid("api")})["api"]
    flow = [{"id": "root", "type": "noop", "queue": PARKED}]
    flow += [{"id": f"n{i}", "type": "noop", "needs": ["root"]} for i in range(nodes - 1)]
    r = await c.post("/api/v1/workflows", json={"nodes": flow}, timeout=300)
    assert r.status_code == 201, r.text[:300]
    for _ in range(0, members, 10_000):
        r = await c.post(
            "/api/v1/batches", json={"jobs": [{"type": "noop", "queue": PARKED}] * 10_000}, timeout=300
        )
        assert r.status_code == 201, r.text[:300]
    after = rss_mib({"api": stack.pid("api")})["api"]
    return {
        "workflow_nodes": nodes,
        "batch_members": members,
        "api_rss_before_mib": before,
        "api_rss_mib": after,
    }


async def key_handoff(c: httpx.AsyncClient, n: int) -> dict:
    """`n` noop jobs of one concurrency key at limit 1: the gap between one's end and the next's start."""
    key = {"key": f"bench:{time.time_ns()}", "limit": 1}
    ids: list[str] = []
    for start in range(0, n, 500):
        r = await c.post(
            "/api/v1/jobs:batch", json={"jobs": [{"type": "noop", "concurrency": key}] * min(500, n - start)}
        )
        ids += [j["id"] for j in r.json()["jobs"]]

    async def all_done() -> bool:
        for i in [ids[-1], *ids[::50]]:
            if (await job(c, i))["status"] != "succeeded":
                return False
        return True

    t0 = time.perf_counter()
    await wait_until(all_done, 600, "the key's jobs to finish")
    took = time.perf_counter() - t0
    runs = sorted([(epoch(j["started_at"]), epoch(j["finished_at"])) for j in [await job(c, i) for i in ids]])
    gaps = [nxt[0] - prev[1] for prev, nxt in zip(runs, runs[1:], strict=False)]
    overlap = sum(1 for g in gaps if g < 0)
    return {**summary(gaps), "jobs": n, "overlapping": overlap, "jobs_per_s": round(n / took, 1)}


async def measure(stack: Stack, args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=60) as c:
        await c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 100})  # warm-up
        out: dict = {}
        if "release" in args.only:
            log("gate release latency")
            out["release"] = await release_latency(c, args.pairs, args.rate)
        if "fan" in args.only:
            log("fan-out/fan-in")
            out["fan"] = await fan_out_in(c, args.width)
        if "batch_get" in args.only:
            log("batch progress reads")
            out["batch_get"] = await batch_progress(c, 10_000, args.gets)
        if "memory" in args.only:
            log("memory with work in flight")
            out["memory"] = await memory(c, stack, args.nodes, args.members)
        if "keys" in args.only:
            log("concurrency key handoff")
            out["key_handoff"] = await key_handoff(c, args.key_jobs)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="postgresql+asyncpg://… (SQLite by default)")
    p.add_argument("--executors", type=int, default=2)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--width", type=int, default=998)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--members", type=int, default=100_000)
    p.add_argument("--gets", type=int, default=300, help="GETs of the 10,000-member batch")
    p.add_argument("--key-jobs", type=int, default=1000, help="jobs of the concurrency key (keys)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="a setting for every service")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="measure these only")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskyard-gates-"))
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
    rows = []
    if rel := res.get("release"):
        rows += [
            ("gate release: parent succeeded → child started p50 / p99 (ms)",
             f"{rel['gate_release']['p50_ms']} / {rel['gate_release']['p99_ms']}"),
            ("  baseline: submit → start of a job with no parent p50 / p99 (ms)",
             f"{rel['baseline_submit_to_start']['p50_ms']} / {rel['baseline_submit_to_start']['p99_ms']}"),
        ]  # fmt: skip
    if fan := res.get("fan"):
        rows.append((f"1 → {args.width} → 1 workflow vs {fan['jobs']} independent jobs (s)",
                     f"{fan['workflow_s']} vs {fan['independent_s']} = {fan['ratio']}×"))  # fmt: skip
    if got := res.get("batch_get"):
        rows += [
            (f"GET batch progress, 10,000 members, {got['cancelled']} ended ({got['n']} GETs) p50 / p99 (ms)",
             f"{got['p50_ms']} / {got['p99_ms']}"),
            ("  the same right after its submit, while its events are projected p50 / p99 (ms)",
             f"{got['burst']['p50_ms']} / {got['burst']['p99_ms']}"),
        ]  # fmt: skip
    if mem := res.get("memory"):
        rows.append((f"api RSS, {args.nodes:,}-node workflow + {args.members:,} batch members in flight (MiB)",
                     f"{mem['api_rss_mib']} (idle {mem['api_rss_before_mib']})"))  # fmt: skip
    if hand := res.get("key_handoff"):
        rows.append((f"concurrency key at limit 1, {hand['jobs']} jobs: previous ended → next started p50 / p99 (ms)",
                     f"{hand['p50_ms']} / {hand['p99_ms']} ({hand['overlapping']} overlapping)"))  # fmt: skip
    for name, value in rows:
        print(f"{name:<78} {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gates-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
