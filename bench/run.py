"""Taskyard benchmarks: figures, not tests (`./taskw bench [--quick] [--db URL] ...`).

One run starts its own nats-server (free ports, temp store) and database, measures

1. the raw JetStream ceiling: a nats-py publish_async + fetch(100)/ack loop on a WorkQueue stream;
2. Taskyard end to end: `noop` jobs through `POST /api/v1/jobs:batch` until all are `succeeded`
   in the API, with the api and executors as real processes (again with --big N jobs, last);
3. `GET /api/v1/jobs/{id}` answer times at a fixed open-loop rate;
4. the drain of queued `sleep 20 ms` jobs by one executor with 64 slots, against slots / sleep;
   then as many again submitted to that executor while it runs (the peers' harness's W3 way);
5. submit→start latency at fixed open-loop rates (`started` event minus `created_at`), beside the
   raw publish→receive latency of one message through a WorkQueue with a waiting pull;
6. the RSS of every service process when it has just started and its peak in each phase;

prints a table and writes everything to bench/results/<UTC timestamp>.json. Everything binds
127.0.0.1, every phase has a deadline, and every process started here is stopped at the end.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from taskyard._spread import AsyncSpread, parse_urls
from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats, free_port, nats_server_binary
from taskyard_common.synced_nats import SyncedNats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = "bench"
NOT_FINAL = ("queued", "running", "retrying", "waiting")
BAD_FINAL = ("failed", "dead", "cancelled")
# The bench client's HTTP connections; the open-loop run keeps at most this many requests in flight.
CONNECTIONS = 32
# The sleep phase's jobs go to a queue of their own, served by one executor started for the phase,
# so its slot count is exactly --sleep-slots whatever --executors and --slots say.
SLEEP_QUEUE = "benchsleep"
SLEEP_EXECUTOR = "executor-sleep"


# --- small helpers ------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(pct(ms, 50), 3),
        "p95": round(pct(ms, 95), 3),
        "p99": round(pct(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(sum(ms) / len(ms), 3),
    }


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def code_digest() -> str:
    """sha256 over the services' and libraries' sources: which code a result was measured on."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def machine() -> dict:
    try:
        version = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"unknown ({exc})"
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gib = round(mem_kib / 2**20, 1)
    from importlib.metadata import version as pkg_version

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": version,
        "nats_py": pkg_version("nats-py"),
        "httpx": pkg_version("httpx"),
    }


# --- the stack: nats-server, database, api, executors -------------------------------------------
class Stack:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.nats: EmbeddedNats | EmbeddedCluster = (
            EmbeddedCluster.local(tmp / "nats", log_dir=tmp)
            if getattr(args, "cluster", False)
            else (SyncedNats if args.nats_sync else EmbeddedNats)(
                store_dir=tmp / "nats",
                port=free_port(),
                monitor_port=free_port(),
                log_file=tmp / "nats-server.log",
            )
        )
        if args.nats_sync:
            if not isinstance(self.nats, SyncedNats):
                raise SystemExit("--nats-sync is for one nats-server (not --cluster)")
            self.nats.sync_interval = args.nats_sync
        self.db_url = ""
        self.pg_admin_dsn = ""
        self.pg_name = ""
        self.key = ""
        self.api_url = ""  # the first api process (latency and GET phases)
        self.api_urls: list[str] = []  # all of them (`--apis`): e2e submits spread over them
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    # database
    async def _pg(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg_admin_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make_db(self) -> str:
        url = self.args.db
        if not url:
            self.db_url = f"sqlite+aiosqlite:///{self.tmp}/b.db"
        else:
            if not url.startswith("postgresql"):
                sys.exit("bench: --db must be a postgresql+asyncpg:// URL (SQLite is the default)")
            self.pg_admin_dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            self.pg_name = "taskyard_bench_" + secrets.token_hex(4)
            asyncio.run(self._pg(f'CREATE DATABASE "{self.pg_name}"'))
            base, _, _ = url.rpartition("/")
            self.db_url = f"{base}/{self.pg_name}"
        self.run_once("taskyard_api", "migrate")
        self.key = json.loads(self.run_once("taskyard_api", "create-key", "bench", "--role", "admin"))["key"]
        return self.db_url

    def drop_db(self) -> None:
        if self.pg_name:
            try:
                asyncio.run(self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'))
            except Exception as exc:  # noqa: BLE001 - report and carry on tearing down
                log(f"could not drop database {self.pg_name}: {exc}")

    # processes
    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
        env.update(
            TASKYARD_NATS_URL=self.nats.url,
            TASKYARD_NATS_PREFIX=PREFIX,
            TASKYARD_NATS_REPLICAS="3" if isinstance(self.nats, EmbeddedCluster) else "1",
            TASKYARD_DB_URL=self.db_url,
            PYTHONUNBUFFERED="1",
            **extra,
        )
        # `--env KEY=VALUE`: a setting for every service, e.g. an A/B of one change in one session.
        env.update(item.split("=", 1) for item in getattr(self.args, "env", None) or [])
        return env

    def run_once(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.tmp,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`python -m {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def spawn(self, name: str, module: str, args: list[str], port_var: str) -> str:
        port = free_port()
        log_path = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env(**{port_var: str(port)}),
            stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        self.procs.append((name, proc, log_path))
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, name: str, url: str, timeout: float = 60) -> None:
        _, proc, log_path = next(p for p in self.procs if p[0] == name)
        deadline = time.monotonic() + timeout
        last = ""
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
                try:
                    r = client.get(f"{url}/readyz")
                    if r.status_code == 200:
                        return
                    last = r.text
                except httpx.HTTPError as exc:
                    last = str(exc)
                time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout}s ({last}):\n{tail(log_path)}")

    def start_api(self) -> None:
        """The api and, as `./taskw up` runs it, the metrics service: its EVENTS consumer is part of
        what a job costs (`--no-metrics` leaves it out)."""
        names = ["api"] + [f"api-{i}" for i in range(1, getattr(self.args, "apis", 1))]
        self.api_urls = [self.spawn(name, "taskyard_api", [], "TASKYARD_API_PORT") for name in names]
        self.api_url = self.api_urls[0]
        metrics = None
        if not getattr(self.args, "no_metrics", False):
            metrics = self.spawn("metrics", "taskyard_metrics", [], "TASKYARD_METRICS_PORT")
        for name, url in zip(names, self.api_urls, strict=True):
            self.wait_ready(name, url)
        if metrics:
            self.wait_ready("metrics", metrics)

    def spawn_executor(self, name: str, queue: str, slots: int) -> tuple[str, str]:
        args = ["--queues", queue, "--slots", str(slots)]
        return name, self.spawn(name, "taskyard_executor", args, "TASKYARD_EXECUTOR_PORT")

    def start_executors(self) -> None:
        # All spawned before waiting for any: they start in parallel.
        urls = [
            self.spawn_executor(f"executor-{i}", "default", self.args.slots)
            for i in range(self.args.executors)
        ]
        for name, url in urls:
            self.wait_ready(name, url)

    def start_sleep_executor(self) -> None:
        """The one executor of the sleep phase, alone on its own queue with --sleep-slots slots."""
        self.wait_ready(*self.spawn_executor(SLEEP_EXECUTOR, SLEEP_QUEUE, self.args.sleep_slots))

    def pid(self, name: str) -> int:
        return next(p for n, p, _ in self.procs if n == name).pid

    def pids(self) -> dict[str, int]:
        """Every running service process by name: nats-server, api, executors, and with --db the
        PostgreSQL backends serving the bench database (`postgresql-<pid>`, when the server runs on
        this machine; its background writers are left out)."""
        if isinstance(self.nats, EmbeddedCluster):
            pids = {f"nats-server-{n.server_name}": n.process.pid for n in self.nats.nodes if n.process}
        else:
            pids = {"nats-server": self.nats.process.pid} if self.nats.process else {}
        pids.update({name: proc.pid for name, proc, _ in self.procs if proc.poll() is None})
        pids.update({f"postgresql-{pid}": pid for pid in pg_backends(self.pg_name)} if self.pg_name else {})
        return pids

    def stop(self) -> None:
        # Executors first (they drain), then the api.
        for _name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log(f"{name} still running 10 s after SIGTERM; killing it")
                proc.kill()
                proc.wait()
        self.nats.stop()


def pg_backends(database: str) -> list[int]:
    """Local PostgreSQL backend processes connected to `database` (their title names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
                found.append(int(entry.name))
    return found


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


# --- 1. raw JetStream ceiling ---------------------------------------------------------------------
# Replicas of the raw phases' streams: `--cluster` makes it 3, as Taskyard's own streams are there.
RAW_REPLICAS = 1


async def raw_stream(js, name: str, subject: str) -> None:
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=RAW_REPLICAS,
        )
    )


async def fetch_and_ack(sub, nc, n: int, batch: int, end: float) -> tuple[float, int]:  # noqa: ANN001
    """Fetch `batch` at a time and ack each until `n` arrived or the monotonic deadline `end`;
    returns (when the last ack was flushed, perf_counter clock; how many arrived)."""
    got = 0
    while got < n and time.monotonic() < end:
        try:
            msgs = await sub.fetch(batch, timeout=1)
        except TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await nc.flush()
    return time.perf_counter(), got


async def raw_throughput(url: str, n: int, size: int, deadline_s: float) -> dict:
    """publish_async + gather acks, and concurrently fetch(100) + ack() until all n are consumed."""
    tag = secrets.token_hex(3)
    stream, subject = f"BENCHRAW_{tag.upper()}", f"benchraw{tag}.q"
    pub_nc = await nats.connect(url.split(","), name="bench-raw-pub", pending_size=64 * 1024 * 1024)
    sub_nc = await nats.connect(url.split(","), name="bench-raw-sub")
    pjs, sjs = pub_nc.jetstream(timeout=10), sub_nc.jetstream(timeout=10)
    try:
        await raw_stream(pjs, stream, subject)
        sub = await sjs.pull_subscribe(
            subject,
            durable="raw",
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1, ack_wait=60),
        )
        payload = secrets.token_hex(size // 2).encode()
        end = time.monotonic() + deadline_s

        consumer = asyncio.create_task(fetch_and_ack(sub, sub_nc, n, 100, end))
        t0 = time.perf_counter()
        futures = [await pjs.publish_async(subject, payload) for _ in range(n)]
        await asyncio.wait_for(asyncio.gather(*futures), deadline_s)
        t_pub = time.perf_counter()
        t_end, got = await consumer
        # Acks are fire-and-forget: check the server applied them all (the stream empties).
        while True:
            info = await pjs.stream_info(stream)
            if info.state.messages == 0 or time.perf_counter() - t_end > 5:
                break
            await asyncio.sleep(0.01)
        t_empty = time.perf_counter()
        return {
            "n": n,
            "consumed": got,
            "msg_bytes": len(payload),
            "seconds": round(t_end - t0, 4),
            "msgs_per_s": round(got / (t_end - t0), 1),
            "publish_msgs_per_s": round(n / (t_pub - t0), 1),
            "left_in_stream": info.state.messages,
            "empty_after_last_ack_s": round(t_empty - t_end, 4),
        }
    finally:
        with contextlib.suppress(Exception):
            await pjs.delete_stream(stream)
        await pub_nc.close()
        await sub_nc.close()


async def raw_job_pattern(url: str, n: int, size: int, deadline_s: float, batched: bool = False) -> dict:
    """A Taskyard job's JetStream messages with no Taskyard code: the ceiling of this design.

    The reference (`batched=False`, the 4-message pattern before issue 19), per job as the api, an
    executor and the projector exchanged them: publish an event (`queued`) and the job (acks gathered
    per 500, like a batch submit); pull jobs 100 at a time, publish each one's two events (`started`,
    `succeeded`), wait for their acks, ack the jobs; pull the events 500 at a time and ack each.

    Today's pattern (`batched=True`): the api publishes the jobs and ONE announcement per 500; the
    executor publishes ONE event message for each pull's jobs (their outcomes in a batch), waits for
    its ack, acks the jobs; the projector pulls and acks those messages. A job is then one JOBS
    message and a share of two EVENTS messages.

    No work between messages, so this is as fast as the pattern goes. Three connections in this one
    process, like the raw loop's two. jobs/s = n / (first publish → last event acked).
    """
    tag = secrets.token_hex(3)
    jobs, events = f"BENCHJOB_{tag.upper()}", f"BENCHEVT_{tag.upper()}"
    job_subject, event_subject = f"benchjob{tag}.q", f"benchevt{tag}.e"
    conns = [
        await nats.connect(url.split(","), name=f"bench-pattern-{i}", pending_size=64 * 1024 * 1024)
        for i in range(3)
    ]
    api, executor, projector = (nc.jetstream(timeout=10) for nc in conns)
    try:
        await raw_stream(api, jobs, job_subject)
        await api.add_stream(
            StreamConfig(
                name=events, subjects=[event_subject], storage=StorageType.FILE, num_replicas=RAW_REPLICAS
            )
        )
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1, ack_wait=60)
        job_sub = await executor.pull_subscribe(job_subject, durable="exec", stream=jobs, config=config)
        event_sub = await projector.pull_subscribe(
            event_subject, durable="proj", stream=events, config=config
        )
        payload = secrets.token_hex(size // 2).encode()
        end = time.monotonic() + deadline_s
        # Event messages the projector must ack: 3 a job, or the batches (counted as they are sent).
        expected = {"events": 0 if batched else 3 * n, "known": not batched}

        async def execute() -> None:
            done = 0
            while done < n and time.monotonic() < end:
                try:
                    msgs = await job_sub.fetch(100, timeout=1)
                except TimeoutError:
                    continue
                # The pull's jobs report their events (one batch, or two each); their acks first.
                count = 1 if batched else 2 * len(msgs)
                body = payload * len(msgs) if batched else payload
                acks = [await executor.publish_async(event_subject, body) for _ in range(count)]
                await asyncio.gather(*acks)
                for msg in msgs:
                    await msg.ack()
                done += len(msgs)
                expected["events"] += count if batched else 0
            expected["known"] = True

        async def project() -> tuple[float, int]:
            got = 0
            while time.monotonic() < end and not (expected["known"] and got >= expected["events"]):
                try:
                    msgs = await event_sub.fetch(500, timeout=0.2)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await msg.ack()
                got += len(msgs)
            await conns[2].flush()
            return time.perf_counter(), got

        if batched:
            expected["events"] = -(-n // 500)  # the announcements
        tasks = [asyncio.create_task(execute()), asyncio.create_task(project())]
        t0 = time.perf_counter()
        for start in range(0, n, 500):
            futures = []
            members = range(start, min(n, start + 500))
            if batched:
                futures.append(await api.publish_async(event_subject, payload * len(members)))
            for _ in members:
                if not batched:
                    futures.append(await api.publish_async(event_subject, payload))
                futures.append(await api.publish_async(job_subject, payload))
            await asyncio.wait_for(asyncio.gather(*futures), deadline_s)
        await tasks[0]
        t_end, got = await tasks[1]
        return {
            "n": n,
            "events_acked": got,
            "events_expected": expected["events"],
            "msg_bytes": len(payload),
            "seconds": round(t_end - t0, 4),
            "jobs_per_s": round(n / (t_end - t0), 1) if got >= expected["events"] else None,
        }
    finally:
        for stream in (jobs, events):
            with contextlib.suppress(Exception):
                await api.delete_stream(stream)
        for nc in conns:
            await nc.close()


async def raw_latency(url: str, samples: int) -> dict:
    """publish→receive of one message at a time, with a pull request already waiting."""
    tag = secrets.token_hex(3)
    stream, subject = f"BENCHLAT_{tag.upper()}", f"benchlat{tag}.q"
    pub_nc = await nats.connect(url.split(","), name="bench-lat-pub")
    sub_nc = await nats.connect(url.split(","), name="bench-lat-sub")
    pjs, sjs = pub_nc.jetstream(timeout=10), sub_nc.jetstream(timeout=10)
    got: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg) -> None:
        got.put_nowait((time.perf_counter(), msg))

    try:
        await raw_stream(pjs, stream, subject)
        await sjs.add_consumer(
            stream, ConsumerConfig(durable_name="lat", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
        )
        inbox = sub_nc.new_inbox()
        await sub_nc.subscribe(inbox, cb=on_msg)
        pull = json.dumps({"batch": 1, "expires": 5_000_000_000}).encode()
        payload = secrets.token_hex(128).encode()
        lat: list[float] = []
        for _ in range(samples):
            await sub_nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.lat", pull, reply=inbox)
            await sub_nc.flush()
            await asyncio.sleep(0.005)  # let the server register the waiting pull
            t0 = time.perf_counter()
            ack = await pjs.publish_async(subject, payload)
            t1, msg = await asyncio.wait_for(got.get(), 5)
            lat.append(t1 - t0)
            await msg.ack()
            await asyncio.wait_for(ack, 5)
        return summary_ms(lat)
    finally:
        with contextlib.suppress(Exception):
            await pjs.delete_stream(stream)
        await pub_nc.close()
        await sub_nc.close()


# --- Taskyard through the API ---------------------------------------------------------------------
NOOP = {"type": "noop"}
# What the figures read from a listed job; the rest is dropped, so that listing 50,000 jobs does
# not keep 50,000 full job documents in the bench client.
LISTED = ("id", "status", "created_at", "started_at", "finished_at", "worker_id")


async def count_jobs(c: httpx.AsyncClient, label: str, statuses: tuple[str, ...]) -> list[dict]:
    """Every job with `bench=label` in one of `statuses` (paged, 500 a request), LISTED fields only."""
    jobs: list[dict] = []
    cursor = None
    while True:
        params = [("label", f"bench={label}"), ("limit", "500")] + [("status", s) for s in statuses]
        if cursor:
            params.append(("cursor", cursor))
        r = await c.get("/api/v1/jobs", params=params)
        r.raise_for_status()
        body = r.json()
        jobs += [{k: job[k] for k in LISTED} for job in body["jobs"]]
        cursor = body["next_cursor"]
        if not cursor:
            return jobs


async def wait_all_final(
    c: httpx.AsyncClient,
    label: str,
    timeout: float,
    interval: float = 0.1,
    ids: list[str] | None = None,
    since: float | None = None,
) -> int:
    """Poll until no `bench=label` job is unfinished: one `limit=1` request per round.

    Each poll is a label-filtered list the api evaluates over every unfinished job, so it is work
    taken from the run being measured: 0.1 s apart while many are left. Given the run's `ids`, the
    poll asks for the oldest unfinished job, whose place among them says how many are left (the
    jobs of one queue and priority end about in order), and comes sooner as the end nears: down to
    5 ms apart, so the poll adds ~5 ms instead of up to 0.1 s to a figure's time (peers' harness
    reads the last job's own end time; the poll's granularity was up to ~9 % of a 5,000-job run).

    `since` (time.monotonic()) is when the first of them was submitted.
    Returns how many ended failed/dead/cancelled (0 when all succeeded).
    """
    deadline = time.monotonic() + timeout
    params = [("label", f"bench={label}"), ("limit", "1"), ("sort", "created_at")]
    params += [("status", s) for s in NOT_FINAL]
    # The api lists `sort=created_at` in id order, and ids (ULIDs) sort by creation time.
    index = {job_id: i for i, job_id in enumerate(sorted(ids or []))}
    t0, sleep = since or time.monotonic(), interval
    while True:
        r = await c.get("/api/v1/jobs", params=params)
        r.raise_for_status()
        left = r.json()["jobs"]
        if not left:
            return len(await count_jobs(c, label, BAD_FINAL))
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs labelled bench={label} still unfinished after {timeout:.0f}s")
        done = index.get(left[0]["id"], 0)
        if done:  # ends so far per second → the time the rest will take, polled at half of it
            rest_s = (len(index) - done) * (time.monotonic() - t0) / done
            sleep = min(interval, max(0.005, rest_s / 2))
        await asyncio.sleep(sleep)


async def submit_batches(
    c: httpx.AsyncClient, label: str, n: int, batch: int, spec: dict = NOOP, senders: int = 1
) -> list[str]:
    """n jobs in `batch`-sized requests, `senders` requests at a time (`--in-flight` per api
    process: the client's transport takes the processes in turn)."""
    spec = {**spec, "labels": {"bench": label}}
    starts = list(range(0, n, batch))

    async def send(mine: list[int]) -> list[str]:
        ids: list[str] = []
        for start in mine:
            k = min(batch, n - start)
            r = await c.post("/api/v1/jobs:batch", json={"jobs": [spec] * k})
            if r.status_code != 201:
                raise RuntimeError(f"batch submit answered {r.status_code}: {r.text[:500]}")
            ids += [j["id"] for j in r.json()["jobs"]]
        return ids

    parts = await asyncio.gather(*(send(starts[i::senders]) for i in range(senders)))
    return [job_id for part in parts for job_id in part]


def longest_gap(starts: list[float]) -> float:
    """The longest stretch with no job starting while some were still waiting: a stall shows here."""
    return max((b - a for a, b in zip(starts, starts[1:], strict=False)), default=0.0)


async def end_to_end(
    c: httpx.AsyncClient,
    label: str,
    n: int,
    batch: int,
    timeout: float,
    pids: Callable[[], dict[str, int]],
    senders: int = 1,
    spec: dict = NOOP,
) -> tuple[dict, list[str]]:
    """The figures, and the jobs' ids (the GET phase reads existing jobs).

    CPU and RSS are metered from the first submit to the last job seen final: listing the jobs
    afterwards (the figures below) is the bench reading, not work a job costs."""
    with PhaseMeter(pids) as meter:
        t0, since = time.perf_counter(), time.monotonic()
        ids = await submit_batches(c, label, n, batch, spec, senders=senders)
        t_submitted = time.perf_counter()
        bad = await wait_all_final(c, label, timeout, ids=ids, since=since)
        t_done = time.perf_counter()
    done = await count_jobs(c, label, ("succeeded",))
    created = [epoch(j["created_at"]) for j in done]
    finished = [epoch(j["finished_at"]) for j in done]
    per_worker = Counter(j["worker_id"] for j in done)
    starts = sorted(epoch(j["started_at"]) for j in done if j["started_at"])
    return {
        "n": n,
        "batch": batch,
        "submitted": len(ids),
        "succeeded": len(done),
        "not_succeeded": bad,
        "seconds": round(t_done - t0, 3),
        "jobs_per_s": round(len(done) / (t_done - t0), 1),
        "submit_seconds": round(t_submitted - t0, 3),
        "submit_jobs_per_s": round(n / (t_submitted - t0), 1),
        # Executor-side: first created_at to the last job's `succeeded` event (the job's clock).
        "executed_seconds": round(max(finished) - min(created), 3) if done else None,
        "longest_start_gap_s": round(longest_gap(starts), 3),
        "jobs_per_worker": dict(sorted(per_worker.items())),
        **meter.figures,
    }, ids


async def drain(
    c: httpx.AsyncClient,
    label: str,
    n: int,
    batch: int,
    start: Callable[[], Awaitable[None]],
    pids: Callable[[], dict[str, int]],
    timeout: float,
    spec: dict = NOOP,
) -> dict:
    """Queue n jobs while no executor serves their queue, `start()` one, time how fast it drains them.

    CPU and RSS are metered from the executors being ready to the last job seen final, so the
    submits and the executors' start-up (imports: ~1 s of CPU) are not in them.
    """
    await submit_batches(c, label, n, batch, spec)
    t0 = time.perf_counter()
    await start()
    with PhaseMeter(pids) as meter:
        bad = await wait_all_final(c, label, timeout)
    t_done = time.perf_counter()
    done = await count_jobs(c, label, ("succeeded",))
    starts = sorted(epoch(j["started_at"]) for j in done)
    first, last = starts[0], max(epoch(j["finished_at"]) for j in done)
    run_s = [epoch(j["finished_at"]) - epoch(j["started_at"]) for j in done]
    return {
        "n": n,
        "succeeded": len(done),
        "not_succeeded": bad,
        "seconds_incl_executor_start": round(t_done - t0, 3),
        # First `started` to last `succeeded`, on the executors' clock: the drain itself.
        "drain_seconds": round(last - first, 3),
        "jobs_per_s": round(len(done) / (last - first), 1) if last > first else None,
        "longest_start_gap_s": round(longest_gap(starts), 3),
        # Jobs running at once, on average, and each one's `started` → `succeeded`: slots left
        # empty (a slow pull) show in the first, per-job overhead in the second.
        "mean_running": round(sum(run_s) / (last - first), 1) if last > first else None,
        "job_run_ms": summary_ms(run_s),
        **meter.figures,
    }


class HttpError(Exception):
    """A request of RawHttp's that got no usable answer."""


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client for the open-loop phases: what they send, nothing more.

    httpx cost this process 2–4 ms of CPU per request on the 2-core box the figures come from
    (anyio streams, httpcore's pool walking every connection and queued request on each change):
    at 200 requests/s the bench client used 50–80 % of a core and starved the api it measured.
    This costs ~0.3 ms. At most `connections` requests are on the wire at once; later ones wait
    in an asyncio.Semaphore. Answers must carry Content-Length (FastAPI's JSON answers do).
    """

    # uvicorn closes a keep-alive connection after 5 s idle: never reuse one idle for this long.
    IDLE_S = 2.0

    def __init__(self, base_url: str, headers: dict[str, str], connections: int = CONNECTIONS) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname, url.port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": url.netloc, **headers}.items())
        self.wire = asyncio.Semaphore(connections)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, used = self.idle.pop()
            if time.monotonic() - used < self.IDLE_S:
                return reader, writer
            writer.close()
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError(repr(exc)) from None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request."""
        async with self.wire:
            reader, writer = await self._connection()
            try:
                extra = (
                    ""
                    if body is None
                    else f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                )
                writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + (body or b""))
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                status = int(head[0].split(" ", 2)[1])
                fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                if "content-length" not in fields:
                    raise HttpError(f"answer without Content-Length: {head[:3]}")
                data = await reader.readexactly(int(fields["content-length"]))
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
                IndexError,
            ) as exc:
                writer.close()
                raise HttpError(repr(exc)) from None
            except BaseException:
                writer.close()  # cancelled mid-answer (the phase's deadline): the connection is unusable
                raise
            if fields.get("connection", "").lower() == "close":
                writer.close()
            else:
                self.idle.append((reader, writer, time.monotonic()))
            return status, data

    async def __aenter__(self) -> "RawHttp":
        return self

    async def __aexit__(self, *_exc) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle = []


async def open_loop(
    rate: float,
    seconds: float,
    request: Callable[[int], Awaitable[tuple[int, bytes]]],
    expect: int,
    grace_s: float,
) -> dict:
    """`request(i)` (a RawHttp request) for i = 0, 1, ... on a fixed schedule, never waiting for
    earlier answers.

    Answer times count from the scheduled send, so a wait for a free connection is in them.
    Whatever is not answered `grace_s` after the last scheduled send is abandoned (cancelled) and
    counted as `unanswered`: the phase's deadline.
    """
    total = max(1, int(rate * seconds))
    ok: list[tuple[int, bytes]] = []
    answer_s: list[float] = []
    errors: list[str] = []
    lag: list[float] = []
    last_answer = 0.0

    async def one(i: int) -> None:
        nonlocal last_answer
        t = time.perf_counter()
        try:
            status, data = await request(i)
        except HttpError as exc:
            errors.append(str(exc))
            return
        last_answer = time.perf_counter()
        answer_s.append(last_answer - t)
        if status != expect:
            errors.append(f"{status}: {data[:200].decode(errors='replace')}")
            return
        ok.append((i, data))

    tasks = []
    start = time.perf_counter() + 0.05
    wall_start = time.time() + 0.05
    for i in range(total):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(max(0.0, time.perf_counter() - target))
        tasks.append(asyncio.create_task(one(i)))
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, start + seconds + grace_s - time.perf_counter()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {
        "total": total,
        "ok": ok,
        "answer_s": answer_s,
        "errors": errors,
        "lag": lag,
        "unanswered": len(pending),
        # First scheduled send to last answer: what the achieved rate is computed over.
        "span_s": max(0.0, last_answer - start),
        "wall_start": wall_start,
    }


async def open_loop_send(http: RawHttp, label: str, rate: float, seconds: float, grace_s: float) -> dict:
    """Single `POST /api/v1/jobs` (noop) at `rate` per second: what the latency figures are read from."""
    body = json.dumps({**NOOP, "labels": {"bench": label}}).encode()
    run = await open_loop(rate, seconds, lambda _i: http.request("POST", "/api/v1/jobs", body), 201, grace_s)
    # job id -> wall time it was scheduled
    run["sent"] = {json.loads(data)["id"]: run["wall_start"] + i / rate for i, data in run.pop("ok")}
    return run


async def read_latencies(http: RawHttp, run: dict) -> dict:
    """Each job's timeline: `started` minus `created_at`, and the parts in between.

    Through RawHttp too: after a 1,000/s run these are 10,000 GETs, and httpx's CPU per request
    would double the time they take on a 2-core box.
    """
    sent = run["sent"]
    created_to_started: list[float] = []
    created_to_queued: list[float] = []
    queued_to_started: list[float] = []
    scheduled_to_started: list[float] = []

    async def timeline(job_id: str) -> None:
        status, data = await http.request("GET", f"/api/v1/jobs/{job_id}")
        if status != 200:
            raise HttpError(f"GET /api/v1/jobs/{job_id} answered {status}: {data[:200]!r}")
        job = json.loads(data)
        created = epoch(job["created_at"])
        at = {}
        for event in job["timeline"]:
            at.setdefault(event["type"], epoch(event["at"]))
        if "started" not in at:
            return
        created_to_started.append(at["started"] - created)
        scheduled_to_started.append(at["started"] - sent[job_id])
        if "queued" in at:
            created_to_queued.append(at["queued"] - created)
            queued_to_started.append(at["started"] - at["queued"])

    await asyncio.gather(*(timeline(job_id) for job_id in sent))
    return {
        "sent": run["total"],
        "accepted": len(sent),
        "unanswered": run["unanswered"],
        "errors": run["errors"][:10],
        "error_count": len(run["errors"]),
        "schedule_lag_ms": summary_ms(run["lag"]),
        "submit_http_ms": summary_ms(run["answer_s"]),
        "created_to_started_ms": summary_ms(created_to_started),
        "created_to_queued_ms": summary_ms(created_to_queued),
        "queued_to_started_ms": summary_ms(queued_to_started),
        "scheduled_to_started_ms": summary_ms(scheduled_to_started),
    }


async def get_load(http: RawHttp, ids: list[str], rate: float, seconds: float, grace_s: float) -> dict:
    """`GET /api/v1/jobs/{id}` of random existing jobs at `rate` per second, open loop."""
    rng = random.Random(8)
    run = await open_loop(
        rate, seconds, lambda _i: http.request("GET", f"/api/v1/jobs/{rng.choice(ids)}"), 200, grace_s
    )
    answered = len(run["ok"])
    # Over the offered window, or longer when answers trailed it: an open loop cannot beat `rate`.
    window = max(run["total"] / rate, run["span_s"])
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "sent": run["total"],
        "ok": answered,
        "unanswered": run["unanswered"],
        "errors": run["errors"][:10],
        "error_count": len(run["errors"]),
        "achieved_per_s": round(answered / window, 1),
        "schedule_lag_ms": summary_ms(run["lag"]),
        "answer_ms": summary_ms(run["answer_s"]),
    }


# --- CPU accounting -------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(vals[:8])
    return (total - vals[3] - vals[4]) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU used by each of our processes, and by everything else on the machine, over a phase.

    `pids()` is asked at each snapshot: a process started during the phase (the sleep phase's
    executor) counts from zero.
    """

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids

    def snapshot(self) -> dict:
        return {
            "t": time.perf_counter(),
            "procs": {name: proc_cpu_s(pid) for name, pid in self.pids().items()},
            "machine": machine_cpu_s(),
        }

    def since(self, before: dict) -> dict:
        after = self.snapshot()
        wall = after["t"] - before["t"]
        out: dict = {"wall_s": round(wall, 3), "core_pct": {}}
        ours = 0.0
        for name, cpu in after["procs"].items():
            earlier = before["procs"].get(name, 0.0)  # None: unreadable then; absent: not started yet
            if cpu is not None and earlier is not None:
                used = cpu - earlier
                ours += used
                out["core_pct"][name] = round(100 * used / wall, 1)
        if after["machine"] and before["machine"]:
            busy = after["machine"][0] - before["machine"][0]
            total = after["machine"][1] - before["machine"][1]
            out["machine_busy_pct"] = round(100 * busy / total, 1) if total else None
            out["core_pct"]["everything else"] = round(100 * max(0.0, busy - ours) / wall, 1)
        return out


# --- memory ---------------------------------------------------------------------------------------
def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A process's resident memory now (VmRSS) or its peak so far (VmHWM), KiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib(pids: dict[str, int], field: str = "VmRSS") -> dict[str, float | None]:
    return {name: mib(rss_kib(pid, field)) for name, pid in pids.items()}


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


class RssSampler:
    """Peak VmRSS of each process over a phase, sampled every `interval` seconds.

    A thread rather than an asyncio task: the open-loop sender keeps the event loop busy for
    longer than the interval at times, and the samples should not depend on that.
    """

    def __init__(self, pids: Callable[[], dict[str, int]], interval: float = 0.1) -> None:
        # Asked at every sample, like CpuMeter, for processes started during the phase.
        self.pids, self.interval = pids, interval
        self.peak_kib: dict[str, int] = {}
        self.samples = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            for name, pid in self.pids().items():
                kib = rss_kib(pid)
                if kib is not None and kib > self.peak_kib.get(name, 0):
                    self.peak_kib[name] = kib
            self.samples += 1
            if self.stopped.wait(self.interval):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> dict:
        self.stopped.set()
        self.thread.join(5)
        return {
            "interval_s": self.interval,
            "samples": self.samples,
            "peak_mib": {name: mib(kib) for name, kib in self.peak_kib.items()},
        }


class PhaseMeter:
    """CPU (CpuMeter) and peak RSS (RssSampler) of each process while a `with` block runs.

    `figures` ({"cpu": ..., "rss": ...}) is set on leaving the block.
    """

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.cpu, self.rss = CpuMeter(pids), RssSampler(pids)
        self.figures: dict = {}

    def __enter__(self) -> "PhaseMeter":
        self.before = self.cpu.snapshot()
        self.rss.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.figures = {"cpu": self.cpu.since(self.before), "rss": self.rss.stop()}


# --- optional profiling with py-spy ---------------------------------------------------------------
class Profiler:
    """`py-spy record --format raw` on the api, the first executor and the metrics service while a
    phase runs."""

    def __init__(self, py_spy: str | None, out_dir: Path, stack: Stack) -> None:
        self.py_spy, self.out_dir, self.stack = py_spy, out_dir, stack
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, phase: str) -> None:
        if not self.py_spy:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        running = self.stack.pids()
        for name in (n for n in ("api", "executor-0", "metrics") if n in running):
            out = self.out_dir / f"{phase}-{name}.folded"
            cmd = [self.py_spy, "record", "--pid", str(self.stack.pid(name)), "--rate", "250"]
            cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append((name, proc, out))
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> dict:
        found: dict = {}
        for name, proc, out in self.procs:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if out.exists():
                found[name] = {"file": str(out), **fold_summary(out)}
            else:
                found[name] = {"error": (err or b"").decode(errors="replace")[-500:]}
        self.procs = []
        return found


def fold_summary(path: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return {"samples": 0}

    def share(counter: Counter) -> list:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(incl)}


# --- the run --------------------------------------------------------------------------------------
async def measure(args: argparse.Namespace, stack: Stack, profiler: Profiler) -> dict:
    out: dict = {}
    idle: dict[str, float | None] = {}

    def note_idle() -> None:
        # RSS of each service right after it started; the first reading of a process wins.
        for name, value in rss_mib(stack.pids()).items():
            idle.setdefault(name, value)

    def pids() -> dict[str, int]:
        return {"bench client": os.getpid(), **stack.pids()}

    note_idle()  # nats-server, before the raw phases load it
    url = stack.nats.url
    # 60 s covers the default 5,000 messages many times over; 50,000 need longer on a slow day.
    raw_deadline = max(60.0, args.jobs / 250)
    log(f"raw JetStream ceiling: {args.raw_rounds} rounds of {args.jobs} messages")
    await raw_throughput(url, 500, 256, 30)  # warm-up
    rounds = [await raw_throughput(url, args.jobs, 256, raw_deadline) for _ in range(args.raw_rounds)]
    median = sorted(rounds, key=lambda r: r["msgs_per_s"])[len(rounds) // 2]
    log(f"raw job pattern: {args.jobs} jobs of 4 JetStream messages")
    pattern = await raw_job_pattern(url, args.jobs, 256, raw_deadline)
    log(f"raw job pattern, batched: {args.jobs} jobs, events in batches")
    batched = await raw_job_pattern(url, args.jobs, 256, raw_deadline, batched=True)
    out["raw_throughput"] = {
        "median": median,
        "rounds": rounds,
        "job_pattern": pattern,
        "batched_pattern": batched,
    }
    log(f"raw JetStream latency: {args.raw_samples} samples")
    out["raw_latency_ms"] = await raw_latency(url, args.raw_samples)

    log("starting the api")
    await asyncio.to_thread(stack.start_api)
    note_idle()
    headers = {"Authorization": f"Bearer {stack.key}"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    # Several api processes (--apis): requests take them in turn, as the SDK's client does.
    spread = AsyncSpread(parse_urls(",".join(stack.api_urls)), httpx.AsyncHTTPTransport(limits=limits))
    async with (
        httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=60, transport=spread) as c,
        RawHttp(stack.api_url, headers) as http,
    ):

        async def start_executors() -> None:
            await asyncio.to_thread(stack.start_executors)
            # With --backlog they begin pulling at once: "idle" is then the moment they are ready.
            note_idle()

        if args.backlog:
            log(
                f"backlog: {args.backlog} jobs queued, then {args.executors} executor(s) × {args.slots} started"
            )
            out["backlog"] = await drain(
                c, "backlog", args.backlog, args.batch, start_executors, pids, max(180.0, args.backlog / 5)
            )
        else:
            log(f"starting {args.executors} executor(s) × {args.slots} slots")
            await start_executors()

        log("warm-up: 200 jobs")
        await submit_batches(c, "warmup", 200, 100)
        await wait_all_final(c, "warmup", 60)

        log(f"end to end: {args.jobs} noop jobs in batches of {args.batch}")
        await asyncio.to_thread(profiler.start, "e2e")
        senders = args.apis * args.in_flight
        e2e_timeout = max(180.0, args.jobs / 10)
        out["e2e"], ids = await end_to_end(
            c, "e2e", args.jobs, args.batch, e2e_timeout, pids, senders=senders
        )
        if profiler.procs:
            out["profile_e2e"] = await asyncio.to_thread(profiler.stop)

        if args.get_rate:
            # Right after e2e, on its jobs: the api is idle again and the database holds ~jobs rows.
            log(f"GET /api/v1/jobs/{{id}}: {args.get_rate:g} req/s open loop for {args.latency_s:g} s")
            await asyncio.to_thread(profiler.start, "get")
            with PhaseMeter(pids) as meter:
                out["get"] = await get_load(http, ids, args.get_rate, args.latency_s, grace_s=60)
            out["get"].update(meter.figures)
            if profiler.procs:
                out["get"]["profile"] = await asyncio.to_thread(profiler.stop)

        if args.sleep_jobs:
            log(
                f"sleep: {args.sleep_jobs} `sleep {args.sleep_ms:g} ms` jobs queued, "
                f"then one executor × {args.sleep_slots} slots started"
            )
            spec = {"type": "sleep", "payload": {"seconds": args.sleep_ms / 1000}, "queue": SLEEP_QUEUE}

            async def start_sleep_executor() -> None:
                await asyncio.to_thread(stack.start_sleep_executor)
                note_idle()

            sleep = await drain(
                c,
                "sleep",
                args.sleep_jobs,
                args.batch,
                start_sleep_executor,
                pids,
                max(180.0, args.sleep_jobs / 10),
                spec=spec,
            )
            ideal = args.sleep_slots / (args.sleep_ms / 1000)
            # The peers' harness runs its W3 the other way: a warm worker, and the jobs submitted
            # while it runs, first submit to last completion. The same jobs again, to the executor
            # the drain left idle: both figures, as the two procedures start jobs differently
            # (a drain in waves of all slots at once, a live run as the batches arrive).
            log(f"sleep, live: {args.sleep_jobs} more submitted to that executor while it runs")
            live, _ = await end_to_end(
                c,
                "sleep-live",
                args.sleep_jobs,
                args.batch,
                max(180.0, args.sleep_jobs / 10),
                pids,
                spec=spec,
            )
            out["sleep"] = {
                **sleep,
                "slots": args.sleep_slots,
                "sleep_ms": args.sleep_ms,
                # Every slot busy all the time, no overhead: slots / sleep.
                "ideal_jobs_per_s": round(ideal, 1),
                "ratio_to_ideal": round(sleep["jobs_per_s"] / ideal, 3) if sleep["jobs_per_s"] else None,
                "live": {
                    **{
                        k: live[k]
                        for k in ("n", "succeeded", "not_succeeded", "seconds", "jobs_per_s", "cpu")
                    },
                    "ratio_to_ideal": round(live["jobs_per_s"] / ideal, 3),
                },
            }

        out["latency"] = []
        for rate in args.rates:
            label, total = f"lat{rate:g}", int(rate * args.latency_s)
            log(f"latency: {rate:g} jobs/s open loop for {args.latency_s:g} s")
            await asyncio.to_thread(profiler.start, f"latency-{rate:g}")
            with PhaseMeter(pids) as meter:
                # Past the api's knee the sends queue up in the client; give up on the ones not
                # answered when even 20 submits/s would have finished them.
                run = await open_loop_send(http, label, rate, args.latency_s, grace_s=max(60.0, total / 20))
                bad = await wait_all_final(c, label, timeout=max(120.0, total / 50))
            entry = {"rate_per_s": rate, "seconds": args.latency_s, "not_succeeded": bad, **meter.figures}
            if profiler.procs:
                entry["profile"] = await asyncio.to_thread(profiler.stop)
            out["latency"].append({**entry, **await read_latencies(http, run)})

        if args.big:
            # Last, so the other phases run on the same database size with or without --big.
            log(f"end to end, big: {args.big} noop jobs in batches of {args.batch}")
            big_timeout = max(180.0, args.big / 10)
            out["big"], _ = await end_to_end(
                c, "big", args.big, args.batch, big_timeout, pids, senders=senders
            )

    out["rss_idle_mib"] = idle
    # The kernel's own peak over each process's life: a check on the 100 ms samples' peaks.
    out["rss_hwm_mib"] = rss_mib(stack.pids(), "VmHWM")
    return out


def cpu_ms_per_job(phase: dict) -> dict[str, float] | None:
    """CPU milliseconds per job of each Taskyard service in a phase (the bench client left out):
    `all`, `api` (every api process, summed), `nats-server`, `metrics` and `executors` (summed)."""
    cpu, n = phase.get("cpu"), phase.get("n")
    if not cpu or not n:
        return None
    ms = {name: pct / 100 * cpu["wall_s"] * 1000 / n for name, pct in cpu["core_pct"].items()}
    out = {"metrics": ms.get("metrics", 0.0)}
    out["nats-server"] = sum(v for name, v in ms.items() if name.startswith("nats-server"))  # every node
    out["api"] = sum(v for name, v in ms.items() if name == "api" or name.startswith("api-"))
    out["executors"] = sum(v for name, v in ms.items() if name.startswith("executor"))
    out["all"] = sum(out.values())
    if postgresql := [v for name, v in ms.items() if name.startswith("postgresql-")]:
        out["postgresql"] = sum(postgresql)  # the database server's share, beside `all`
    return out


def table(res: dict) -> list[list[str]]:
    """figure, value, baseline, ratio: throughput ratios are value/baseline (1.0 = the ceiling),
    latency ratios are how many times the raw NATS latency."""
    raw_t = res["raw_throughput"]
    raw = raw_t["median"]["msgs_per_s"]
    pattern = raw_t["job_pattern"]["jobs_per_s"]
    rl = res["raw_latency_ms"]

    def frac(a: float | None, b: float | None) -> str:
        return f"{a / b:.3f}" if a and b else "-"

    def times(a: float | None, b: float | None) -> str:
        return f"{a / b:,.0f}×" if a and b else "-"

    def throughput(name: str, value: float | None, digits: int = 1) -> list[str]:
        return [name, f"{value or 0:,.{digits}f}", f"{raw:,.0f}", frac(value, raw)]

    def latency(name: str, ms: dict) -> list[list[str]]:
        return [
            [f"{name} {p} (ms)", f"{ms.get(p, 0):,.1f}", f"{rl[p]:.2f}", times(ms.get(p), rl[p])]
            for p in ("p50", "p95", "p99")
        ]

    def p50_p99(name: str, ms: dict, digits: int = 1) -> list[str]:
        return [f"{name} p50 / p99 (ms)", f"{ms.get('p50', 0):.{digits}f} / {ms.get('p99', 0):.{digits}f}", "-", "-"]  # fmt: skip

    rows = [
        ["figure", "value", "baseline", "ratio"],
        ["raw JetStream publish+pull+ack (msg/s)", f"{raw:,.0f}", "-", "-"],
        throughput("raw job pattern, 4 messages a job, no Taskyard (jobs/s)", pattern),
    ]
    if batched := (raw_t.get("batched_pattern") or {}).get("jobs_per_s"):
        rows.append(throughput("raw job pattern, events in batches, no Taskyard (jobs/s)", batched))
    for key in ("e2e", "big"):
        if key in res:
            e2e = res[key]
            rows.append(throughput(f"Taskyard e2e noop, {e2e['n']:,} jobs (jobs/s)", e2e["jobs_per_s"]))
            rows.append([" of the raw job pattern", f"{e2e['jobs_per_s']:,.1f}", f"{pattern:,.0f}", frac(e2e["jobs_per_s"], pattern)])  # fmt: skip
            rows.append(throughput("  batch submit alone (jobs/s)", e2e["submit_jobs_per_s"], 0))
            if per_job := cpu_ms_per_job(e2e):
                parts = " / ".join(
                    f"{per_job[k]:.3f}" for k in ("api", "nats-server", "metrics", "executors")
                )
                rows.append(["  CPU per job (ms): all services", f"{per_job['all']:.3f}", "-", "-"])
                rows.append(["  … api / nats-server / metrics / executors", parts, "-", "-"])
                if "postgresql" in per_job:
                    rows.append(["  … PostgreSQL's backends (not in `all`)", f"{per_job['postgresql']:.3f}", "-", "-"])  # fmt: skip
    if "backlog" in res:
        b = res["backlog"]
        rows.append(throughput(f"  drain of {b['n']:,} queued jobs (jobs/s)", b["jobs_per_s"]))
    if "sleep" in res:
        s = res["sleep"]
        name = f"sleep {s['sleep_ms']:g} ms × {s['n']:,}, {s['slots']} slots (jobs/s)"
        rows.append([name, f"{s['jobs_per_s'] or 0:,.1f}", f"{s['ideal_jobs_per_s']:,.0f} ideal", frac(s["jobs_per_s"], s["ideal_jobs_per_s"])])  # fmt: skip
        rows.append(["  jobs running (mean) / each job's run p50 (ms)", f"{s['mean_running'] or 0:.1f} / {s['job_run_ms'].get('p50', 0):.1f}", f"{s['slots']} / {s['sleep_ms']:g}", frac(s["mean_running"], s["slots"])])  # fmt: skip
        if "live" in s:
            rows.append(["  the same submitted to it running, first submit → last end (jobs/s)", f"{s['live']['jobs_per_s']:,.1f}", f"{s['ideal_jobs_per_s']:,.0f} ideal", frac(s["live"]["jobs_per_s"], s["ideal_jobs_per_s"])])  # fmt: skip
    for lat in res["latency"]:
        rows += latency(f"submit→start @{lat['rate_per_s']:g}/s", lat["created_to_started_ms"])
        rows.append(p50_p99("  queued→started", lat["queued_to_started_ms"]))
        rows.append(p50_p99("  POST /jobs answer", lat["submit_http_ms"], 0))
        if lat["unanswered"] or lat["error_count"]:
            rows.append(["  POST /jobs unanswered / errors", f"{lat['unanswered']} / {lat['error_count']}", f"{lat['sent']} sent", "-"])  # fmt: skip
    if "get" in res:
        g = res["get"]
        rows += latency(f"GET /jobs/{{id}} @{g['rate_per_s']:g}/s", g["answer_ms"])
        rows.append(["  achieved (req/s)", f"{g['achieved_per_s'] or 0:,.1f}", f"{g['rate_per_s']:g}", frac(g["achieved_per_s"], g["rate_per_s"])])  # fmt: skip
        if g["unanswered"] or g["error_count"]:
            rows.append(["  GET unanswered / errors", f"{g['unanswered']} / {g['error_count']}", f"{g['sent']} sent", "-"])  # fmt: skip
    rows += rss_rows(res)
    return rows


def rss_rows(res: dict) -> list[list[str]]:
    """One row per service process: RSS right after start, peak in the e2e phase, peak in any phase."""
    phases = [res[k] for k in ("backlog", "e2e", "get", "sleep", "big") if k in res] + res["latency"]

    def show(mib_: float | None) -> str:
        return f"{mib_:,.0f}" if mib_ else "-"

    rows = []
    for name, idle in res["rss_idle_mib"].items():
        if name.startswith("postgresql-"):
            continue  # the database server's backends: not a Taskyard service
        e2e = res["e2e"]["rss"]["peak_mib"].get(name)
        peak = max((p["rss"]["peak_mib"].get(name) or 0 for p in phases), default=0)
        rows.append([f"RSS {name} idle / e2e / any phase (MiB)", f"{show(idle)} / {show(e2e)} / {show(peak)}", "-", "-"])  # fmt: skip
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--jobs", type=int, default=None, help="jobs for the e2e run and raw messages (default 5000)"
    )
    p.add_argument("--quick", action="store_true", help="1000 jobs and a 3 s latency run")
    p.add_argument(
        "--db", help="postgresql+asyncpg://user@host:port/db: bench a fresh database on that server"
    )
    p.add_argument("--executors", type=int, default=2, help="executor processes (default 2)")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="a local 3-node JetStream cluster, every stream at replicas 3 (the raw phases' too)",
    )
    p.add_argument(
        "--apis",
        type=int,
        default=1,
        help="api processes (default 1; more need --db postgresql…): e2e batches spread over them",
    )
    p.add_argument("--slots", type=int, default=64, help="slots per executor (default 64)")
    p.add_argument("--batch", type=int, default=500, help="jobs per jobs:batch request (default 500)")
    p.add_argument(
        "--in-flight",
        type=int,
        help="e2e: jobs:batch requests each api process is sent at a time (default: 2 on PostgreSQL, "
        "where the next one's INSERT overlaps the previous one's waits on the server; 1 on SQLite, "
        "where 2 was faster but the api's RSS grew past 120 MB: docs/performance.md, stop 44)",
    )
    p.add_argument(
        "--rates",
        "--rate",
        dest="rates",
        type=rates,
        default=[100.0, 1000.0],
        help="latency runs: jobs/s, comma-separated, one run each (default 100,1000)",
    )
    p.add_argument(
        "--latency-seconds",
        dest="latency_s",
        type=float,
        default=None,
        help="length of each latency run and of the GET run (default 10, quick 3)",
    )
    p.add_argument(
        "--get-rate",
        type=float,
        default=200.0,
        help="GET /api/v1/jobs/{id} of e2e jobs: req/s open loop (default 200; 0 skips)",
    )
    p.add_argument(
        "--sleep-jobs",
        type=int,
        default=None,
        help="sleep phase: jobs queued, then drained by one executor (default 2000, quick 500; 0 skips)",
    )
    p.add_argument("--sleep-slots", type=int, default=64, help="that executor's slots (default 64)")
    p.add_argument("--sleep-ms", type=float, default=20.0, help="each sleep job's sleep (default 20)")
    p.add_argument(
        "--big",
        type=int,
        default=None,
        help="a second, last e2e run with this many jobs (default 50000; quick: 0, skipped)",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="first queue this many jobs with no executor up, then time the drain (default 0: skip)",
    )
    p.add_argument("--raw-rounds", type=int, default=3, help="raw ceiling rounds; the median is reported")
    p.add_argument("--py-spy", help="path to a py-spy binary: profile the api and one executor")
    p.add_argument(
        "--profile-dir",
        default=None,
        help="where py-spy output goes (default /tmp/taskyard-bench-profiles-<ts>)",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/<ts>.json")
    p.add_argument("--out", help="also write the run's record (params, results, table) to this JSON file")
    p.add_argument(
        "--no-metrics", action="store_true", help="run without the metrics service (`./taskw up` runs it)"
    )
    p.add_argument(
        "--nats-sync",
        default=None,
        help="JetStream sync_interval of the bench's nats-server: `always` (fsync before every ack) or "
        "a duration (default: nats-server's own, 2 min); docs/operations.md, Durability",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="a setting for every service started (repeatable), e.g. TASKYARD_EXECUTOR_STARTED_COALESCE_S=0",
    )
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 1000 if args.quick else 5000
    if args.latency_s is None:
        args.latency_s = 3.0 if args.quick else 10.0
    if args.sleep_jobs is None:
        args.sleep_jobs = 500 if args.quick else 2000
    if args.big is None:
        args.big = 0 if args.quick else 50_000
    args.raw_samples = 100 if args.quick else 300
    if args.jobs < 1 or args.executors < 1 or args.slots < 1 or args.batch < 1 or args.latency_s <= 0:
        p.error("--jobs, --executors, --slots, --batch and --latency-seconds must be positive")
    if args.sleep_slots < 1 or args.sleep_ms <= 0:
        p.error("--sleep-slots and --sleep-ms must be positive")
    if min(args.backlog, args.big, args.sleep_jobs, args.get_rate) < 0:
        p.error("--backlog, --big, --sleep-jobs and --get-rate must not be negative")
    return args


def rates(text: str) -> list[float]:
    """`100,1000` -> [100.0, 1000.0]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 100,1000, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return values


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global RAW_REPLICAS
    RAW_REPLICAS = 3 if args.cluster else 1
    if args.in_flight is None:
        args.in_flight = 2 if args.db else 1
    if args.apis > 1 and not args.db:
        sys.exit("bench: --apis above 1 needs --db postgresql+asyncpg://… (one api process per SQLite file)")
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    digest = code_digest()
    tmp = Path(tempfile.mkdtemp(prefix="taskyard-bench-"))
    stack = Stack(args, tmp)
    profile_dir = Path(
        args.profile_dir or f"{tempfile.gettempdir()}/taskyard-bench-profiles-{started:%Y%m%dT%H%M%SZ}"
    )
    profiler = Profiler(args.py_spy, profile_dir, stack)
    try:
        stack.nats.start()
        stack.make_db()
        results = asyncio.run(measure(args, stack, profiler))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); stopping everything")
        return 130
    except Exception as exc:  # noqa: BLE001 - tell what broke, then tear down
        log(f"failed: {exc!r}")
        for name, _proc, path in stack.procs:
            log(f"--- last lines of {name}:\n{tail(path, 1500)}")
        return 1
    finally:
        for _name, proc, _ in profiler.procs:
            if proc.poll() is None:
                proc.kill()
        stack.stop()
        stack.drop_db()
        if os.environ.get("BENCH_KEEP_TMP"):
            log(f"keeping {tmp} (BENCH_KEEP_TMP is set)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    record = {
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "code_digest": digest,
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "params": {
            "jobs": args.jobs,
            "batch": args.batch,
            "executors": args.executors,
            "slots": args.slots,
            "rates_per_s": args.rates,
            "latency_seconds": args.latency_s,
            "get_rate_per_s": args.get_rate,
            "sleep_jobs": args.sleep_jobs,
            "sleep_slots": args.sleep_slots,
            "sleep_ms": args.sleep_ms,
            "big": args.big,
            "raw_rounds": args.raw_rounds,
            "backlog": args.backlog,
            "raw_samples": args.raw_samples,
            "db": "postgresql" if args.db else "sqlite",
            "apis": args.apis,
            "in_flight": args.in_flight,
            "cluster": args.cluster,
            "env": args.env or [],
            "nats_sync": args.nats_sync,
            "quick": args.quick,
        },
        "results": results,
    }
    rows = table(results)
    record["table"] = rows
    m = record["machine"]
    print(
        f"\nTaskyard bench {record['started_at']}  db={record['params']['db']}  "
        f"{'3-node cluster  ' if args.cluster else ''}{args.apis} api  {args.in_flight} in flight  {args.executors}×{args.slots} slots  nproc={m['nproc']}  python {m['python']}  {m['nats_server']}\n"
    )
    print_table(rows)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {path.relative_to(ROOT)}")
    if args.out:  # bench/compare.py reads each variant's record from here
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if args.py_spy:
        print(f"py-spy output: {profile_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
