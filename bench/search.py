"""Job search latency over 1,000,000 jobs on PostgreSQL, through the API's own query builder.

    .venv/bin/python bench/search.py [--jobs 1000000] [--url postgresql+asyncpg://postgres@127.0.0.1:5432/] [--drop]

Creates (or reuses, if it holds the jobs already) the database `bench_search`, migrated to head,
fills it with jobs spread over 30 days (20 queues, 50 types, 80 % succeeded, 10 % failed, 5 % dead,
5 % queued; failures carry one of 10 error classes), then times each search shape 60 times with
varied values (50 rows a page, as the UI asks) and prints p50/p99 per shape. `--drop` drops the
database afterwards (the fill takes minutes; keep it to measure again).
"""

import argparse
import asyncio
import json
import random
import statistics
import time

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from taskyard_api.ids import new_id
from taskyard_api.job_search import JobFilter, read_page
from taskyard_api.migrate import upgrade

DB = "bench_search"
ERRORS = [
    ("ProcessFailed", "command exited with status {n}"),
    ("HTTPStatusError", "upstream answered 503 for /v1/items/{n}"),
    ("TimeoutError", "job ran longer than its timeout of {n} s"),
    ("RuntimeError", "unexpected state in batch {n}"),
    ("ValueError", "invalid literal for int() with base 10: 'x{n}'"),
    ("KeyError", "'customer_{n}'"),
    ("ConnectionError", "connection refused by db-{n}.internal"),
    ("PermanentError", "bad input: field {n} missing"),
    ("WorkerLost", "worker lost on the last of 3 attempts"),
    ("DiskFull", "disk quota exceeded on volume vol-{n}"),
]


def _row(i: int, now: float, owner: str) -> tuple:
    rnd = random.random()
    status = "succeeded" if rnd < 0.8 else "failed" if rnd < 0.9 else "dead" if rnd < 0.95 else "queued"
    created = now - random.random() * 30 * 86400
    started = created + random.random() * 5 if status != "queued" else None
    finished = started + random.random() * 60 if started is not None else None
    error = None
    if status in ("failed", "dead"):
        kind, message = random.choice(ERRORS)
        error = json.dumps(
            {"type": kind, "message": message.format(n=random.randint(1, 5000)), "retryable": True}
        )
    payload = json.dumps(
        {"customer": random.randint(1, 10_000), "region": random.choice(["eu", "us", "ap"]), "n": i}
    )
    return (
        new_id(created),
        f"type_{i % 50}",
        f"queue_{i % 20}",
        "normal",
        status,
        payload,
        "{}",
        3600.0,
        3,
        json.dumps({"initial_s": 1, "max_s": 60, "factor": 2}),
        None,
        owner,
        0,
        0,
        None,
        1 if status != "queued" else 0,
        None,
        None,
        None,
        None,
        None,
        error,
        0,
        created,
        finished or created,
        started,
        finished,
    )


COLUMNS = [
    "id",
    "type",
    "queue",
    "priority",
    "status",
    "payload",
    "labels",
    "timeout_s",
    "max_attempts",
    "backoff",
    "idempotency_key",
    "owner_id",
    "generation",
    "resume",
    "traceparent",
    "attempt",
    "worker_id",
    "stream_seq",
    "outbox_at",
    "progress",
    "result",
    "error",
    "last_event_seq",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
]


async def fill(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM jobs")
        if have >= n:
            print(f"reusing {have} jobs")
            return
        await conn.execute(
            "INSERT INTO api_keys VALUES ('bench', 'bench', 'admin', 'x', 0, NULL) ON CONFLICT DO NOTHING"
        )
        now = time.time()
        started = time.monotonic()
        for start in range(have, n, 50_000):
            rows = [_row(i, now, "bench") for i in range(start, min(n, start + 50_000))]
            await conn.copy_records_to_table("jobs", records=rows, columns=COLUMNS)
        await conn.execute("ANALYZE jobs")
        print(f"inserted {n - have} jobs in {time.monotonic() - started:.0f} s")
    finally:
        await conn.close()


def shapes(ids: list[str], now: float) -> dict[str, callable]:
    def iso(ts: float) -> str:
        return str(round(ts, 3))

    return {
        "newest page (no filter)": lambda: (JobFilter(), "-created_at"),
        "id_prefix (8 chars)": lambda: (JobFilter(id_prefix=random.choice(ids)[:8]), "-created_at"),
        "id_prefix (12 chars)": lambda: (JobFilter(id_prefix=random.choice(ids)[:12]), "-created_at"),
        "error, common class": lambda: (JobFilter(error=random.choice(ERRORS)[0]), "-created_at"),
        "error, rare text": lambda: (JobFilter(error=f"vol-{random.randint(1, 5000)}"), "-created_at"),
        "error + queue + dead": lambda: (
            JobFilter(
                error=random.choice(ERRORS)[0], queue=f"queue_{random.randint(0, 19)}", status=["dead"]
            ),
            "-created_at",
        ),
        "payload containment (1 of 10k)": lambda: (
            JobFilter(payload=json.dumps({"customer": random.randint(1, 10_000)})),
            "-created_at",
        ),
        "payload, 2 keys": lambda: (
            JobFilter(payload=json.dumps({"customer": random.randint(1, 10_000), "region": "eu"})),
            "-created_at",
        ),
        "finished in 1 h, by finish": lambda: (
            JobFilter(
                finished_after=iso(t := now - random.random() * 29 * 86400), finished_before=iso(t + 3600)
            ),
            "-finished_at",
        ),
        "created in 1 day + status failed": lambda: (
            JobFilter(
                created_after=iso(t := now - random.random() * 29 * 86400),
                created_before=iso(t + 86400),
                status=["failed"],
            ),
            "-created_at",
        ),
        "queue + dead, by finish": lambda: (
            JobFilter(queue=f"queue_{random.randint(0, 19)}", status=["dead"]),
            "-finished_at",
        ),
        "queue + failed or dead (2 statuses)": lambda: (
            JobFilter(queue=f"queue_{random.randint(0, 19)}", status=["failed", "dead"]),
            "-created_at",
        ),
        "sorted by queue": lambda: (JobFilter(), "queue"),
    }


async def measure(url: str, rounds: int) -> None:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        ids = [
            r[0] for r in await conn.exec_driver_sql("SELECT id FROM jobs WHERE random() < 0.01 LIMIT 2000")
        ]
        await conn.commit()  # each search is its own transaction, as in the API
        for name, make in shapes(ids, time.time()).items():
            took = []
            for _ in range(rounds):
                flt, sort = make()
                started = time.perf_counter()
                async with conn.begin():
                    rows = await read_page(conn, flt, "postgresql", sort, None, 51)
                took.append((time.perf_counter() - started) * 1000)
                assert len(rows) <= 51
            took.sort()
            p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
            print(f"| {name} | {statistics.median(took):.1f} | {p99:.1f} | {max(took):.1f} |")
    await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/")
    parser.add_argument("--drop", action="store_true", help="drop the database when done")
    args = parser.parse_args()
    admin = await asyncpg.connect(args.url.replace("+asyncpg", "") + "postgres")
    if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB):
        await admin.execute(f"CREATE DATABASE {DB}")
    await admin.close()
    url = args.url + DB
    await asyncio.to_thread(upgrade, url)
    await fill(url.replace("+asyncpg", ""), args.jobs)
    print(f"| search over {args.jobs:,} jobs | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    await measure(url, args.rounds)
    if args.drop:
        admin = await asyncpg.connect(args.url.replace("+asyncpg", "") + "postgres")
        await admin.execute(f"DROP DATABASE {DB} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
