"""nats-server memory per retained job: run N noop jobs through the whole stack, let nats-server's
caches expire, and divide what its memory grew by N.

Memory is the Go heap, not the resident size (Go hands freed memory back to the system slowly),
read right after the quiet: in use after two collections forced through the profiling port, and
the live heap the last of them left (GODEBUG=gctrace=1, in MB). Two, because one collection only
moves sync.Pool's buffers (message-block caches of megabytes) to its victim cache and the next one
frees them: buffers for reuse, not memory a retained job holds.
Two moments: while JOBS' duplicate window still holds every job's message id (the first minutes
after a burst) and, with `--after-window`, once the window has passed (what a job costs for the
rest of EVENTS' retention: its events and their subjects). The streams' own byte counts are on
disk, not in memory, and are reported beside.

    uv run python bench/nats_memory.py --jobs 50000 [--settle 40] [--after-window]
"""

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from run import PREFIX, RESULTS, Stack, log, submit_batches, wait_all_final  # noqa: E402

from taskyard_common.embedded import free_port  # noqa: E402
from taskyard_common.settings import NatsSettings  # noqa: E402
from taskyard_common.topology import Topology  # noqa: E402


def varz(stack: Stack) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.nats.monitor_port}/varz", timeout=5) as r:
        return json.load(r)


def jsz(stack: Stack) -> dict:
    url = f"http://127.0.0.1:{stack.nats.monitor_port}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


GC_LINE = re.compile(rb"^gc \d+ @.*?(\d+)->(\d+)->(\d+) MB", re.M)


def live_heaps(stack: Stack) -> list[int]:
    """The Go heap left live after each collection so far (MB), from GODEBUG=gctrace=1's lines."""
    return [int(m.group(3)) for m in GC_LINE.finditer(stack.nats.log_file.read_bytes())]


def heap_in_use(stack: Stack) -> int:
    """nats-server's heap in use (bytes) after two forced collections (the module's docstring)."""
    url = f"http://127.0.0.1:{stack.nats.profile_port}/debug/pprof/heap?gc=1"
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
    with urllib.request.urlopen(url + "&debug=1", timeout=30) as r:
        text = r.read().decode()
    found = re.search(r"^# HeapAlloc = (\d+)$", text, re.M)
    if found is None:
        raise RuntimeError("no HeapAlloc in nats-server's heap profile")
    return int(found.group(1))


def reading(stack: Stack, seconds: float) -> dict:
    """Both readings after `seconds` of quiet, taken at once: two forced collections, then the heap
    in use and the live heap the last collection left (gctrace). Waiting for a collection that
    comes by itself (up to 2 minutes when idle) would let JOBS' duplicate window pass unseen."""
    time.sleep(seconds)
    in_use = heap_in_use(stack)
    time.sleep(0.5)  # the forced collections' gctrace lines reach the log
    return {"live_mb": live_heaps(stack)[-1], "in_use_bytes": in_use}


def per_job(before: dict, after: dict, jobs: int) -> dict:
    return {
        "live_heap": round((after["live_mb"] - before["live_mb"]) * 2**20 / jobs, 1),
        "in_use": round((after["in_use_bytes"] - before["in_use_bytes"]) / jobs, 1),
    }


def streams(stack: Stack) -> dict:
    topo = Topology(NatsSettings(prefix=PREFIX))
    out = {}
    for account in jsz(stack).get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] in (topo.events_stream, topo.jobs_stream):
                state = stream["state"]
                out[stream["name"]] = {
                    "messages": state["messages"],
                    "bytes": state["bytes"],
                    "subjects": state.get("num_subjects"),
                }
    return out


async def run_jobs(stack: Stack, n: int, batch: int) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=60) as c:
        await submit_batches(c, "mem", n, batch)
        bad = await wait_all_final(c, "mem", timeout=max(180.0, n / 20))
        if bad:
            raise RuntimeError(f"{bad} jobs did not succeed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="postgresql+asyncpg://… (SQLite by default)")
    p.add_argument("--executors", type=int, default=2)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--settle", type=float, default=40.0, help="seconds of quiet before each reading")
    p.add_argument("--after-window", action="store_true", help="also read once JOBS' duplicate window passed")
    p.add_argument("--env", action="append", help="KEY=VALUE for every service (an A/B of one setting)")
    # run.Stack's other settings: one nats-server at its default sync, one api.
    p.set_defaults(nats_sync=None, cluster=False, apis=1, no_metrics=False)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskyard-natsmem-"))
    stack = Stack(args, tmp)
    stack.nats.profile_port = free_port()
    os.environ["GODEBUG"] = "gctrace=1"  # nats-server prints each collection's live heap to its log
    stack.nats.start()
    res: dict = {"at": datetime.now(UTC).isoformat(), "jobs": args.jobs, "env": args.env or []}
    try:
        stack.make_db()
        stack.start_api()
        stack.start_executors()
        asyncio.run(run_jobs(stack, 200, 200))  # warm-up: consumers, caches, the first blocks
        before = reading(stack, args.settle)
        log(f"{args.jobs:,} noop jobs")
        asyncio.run(run_jobs(stack, args.jobs, args.batch))
        log(f"settling {args.settle:g} s")
        after = reading(stack, args.settle)
        res["readings"] = {"before": before, "after": after}
        res["in_window_bytes_per_job"] = per_job(before, after, args.jobs)
        res["streams"] = streams(stack)
        if args.after_window:
            window = NatsSettings().duplicate_window_s
            log(f"waiting for JOBS' {window:g} s duplicate window to pass")
            res["readings"]["after_window"] = late = reading(stack, window)
            res["after_window_bytes_per_job"] = per_job(before, late, args.jobs)
    finally:
        stack.stop()
        stack.drop_db()
    print(json.dumps(res, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"natsmem-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
