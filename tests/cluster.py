"""Helpers of the JetStream-cluster tests: a steady submit load, a sampler of finished jobs that
times the recovery after a fault, and the stream and consumer leaders from nats-server's /jsz."""

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from taskyard_common.embedded import EmbeddedCluster

from .stack import Stack

# The first second or two accept less (350-450 jobs/s of 650 offered, then 600-900) while the api's
# database pool and the executors' pulls fill: a fault comes at least LOAD_BEFORE_FAULT_S after
# the start, once the STEADY_WINDOW_S before it accepted the floor (Load.wait_steady); on a slow
# machine that can take a few seconds more.
LOAD_BEFORE_FAULT_S = 7.0
STEADY_WINDOW_S = 4.0
STEADY_WAIT_S = 30.0


@dataclass
class Load:
    """Batches of jobs at `rate` jobs/s from `threads` clients until stopped: mostly `noop`, a
    fifth `chaos` jobs that sleep 2–10 ms (executors busy). A batch the api refuses is not retried
    (it wrote nothing: the api refuses before writing while it has no NATS connection) unless
    `resend`: then each job has an idempotency key and a refused or unanswered batch is sent again
    until accepted (a database that died mid-commit may have kept it: the same keys give the same
    jobs), so `accepted` is every job that exists."""

    stack: Stack
    rate: float = 600
    batch: int = 50
    # Clients in parallel: a 50-job batch takes 60-160 ms at p50 on the 3-node cluster (its publishes
    # wait for 2 of 3 replicas) and over 1 s at p90 while nodes fail over; 3 clients offered 650/s
    # but kept only 300-410 accepted, 8 keep the offered 650.
    threads: int = 8
    resend: bool = False
    resent: int = 0
    accepted: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, jobs accepted)
    started_at: float = 0.0
    stopped_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Load":
        self.started_at = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)
        self.stopped_at = time.monotonic()
        assert not any(t.is_alive() for t in self._workers), "a submit thread hangs"

    @property
    def jobs_per_s(self) -> float:
        return len(self.accepted) / max(1e-9, (self.stopped_at or time.monotonic()) - self.started_at)

    def steady_rate(self, until: float) -> float:
        """Jobs/s accepted in the STEADY_WINDOW_S before `until` (monotonic): the load before a
        fault, when the api answers at once."""
        since = until - STEADY_WINDOW_S
        jobs = sum(n for at, n in self.answered if since <= at <= until)
        return jobs / STEADY_WINDOW_S

    def wait_steady(self, floor: float) -> float:
        """Wait LOAD_BEFORE_FAULT_S, then until the last STEADY_WINDOW_S accepted `floor` jobs/s
        (STEADY_WAIT_S at most); returns that rate, which the test asserts."""
        time.sleep(LOAD_BEFORE_FAULT_S)
        deadline = time.monotonic() + STEADY_WAIT_S
        while (rate := self.steady_rate(time.monotonic())) < floor and time.monotonic() < deadline:
            time.sleep(0.25)
        return rate

    def _specs(self, rng: random.Random, key: str) -> list[dict]:
        specs = [
            {"type": "chaos", "payload": {"sleep": rng.uniform(0.002, 0.01)}}
            if rng.random() < 0.2
            else {"type": "noop"}
            for _ in range(self.batch)
        ]
        if self.resend:
            for i, spec in enumerate(specs):
                spec["idempotency_key"] = f"{key}-{i}"
        return specs

    def _post(self, c, specs: list[dict]) -> bool:
        """One try of a batch: True when accepted."""
        try:
            r = c.post("/api/v1/jobs:batch", json={"jobs": specs})
        except Exception as exc:  # noqa: BLE001 - recorded; the test fails on it
            self.refused.append(repr(exc))
            return False
        if r.status_code != 201:
            self.refused.append(f"{r.status_code} {r.text[:200]}")
            return False
        with self._lock:
            self.accepted |= {j["id"] for j in r.json()["jobs"]}
            self.answered.append((time.monotonic(), self.batch))
        return True

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        interval = self.batch * self.threads / self.rate
        next_at = time.monotonic() + worker * interval / self.threads
        sent = 0
        with self.stack.http() as c:
            while not self._stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                # A late answer is not made up by a burst: the offered load stays steady.
                next_at = max(next_at + interval, time.monotonic())
                specs = self._specs(rng, f"w{worker}-{sent}")
                sent += 1
                if self._post(c, specs) or not self.resend:
                    continue
                deadline = time.monotonic() + 50  # also after stop(): a refused batch is not left out
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    self.resent += 1
                    if self._post(c, specs):
                        break
                else:
                    raise AssertionError("a batch was refused for 50 s")


class Finished:
    """Samples, every 0.2 s in its own thread, how many jobs have succeeded and how many of those
    were created after the fault: the recovery time is from the fault to the first job created
    after it that has succeeded (submit, JOBS, an executor, EVENTS and the projector all work)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.samples: list[tuple[float, int, int]] = []  # (wall time, succeeded, created after fault)
        self.fault_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> "Finished":
        self._thread.start()
        return self

    def fault(self) -> float:
        """Call at the fault: returns its monotonic time (for Load.steady_rate)."""
        self.fault_at = time.time()
        return time.monotonic()

    def recovered_after(self, timeout: float = 60) -> float:
        """Seconds from the fault until a job created after it had succeeded (waits for it)."""
        assert self.fault_at is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, _, after in list(self.samples):
                if after and at >= self.fault_at:
                    return at - self.fault_at
            time.sleep(0.1)
        raise AssertionError(f"no job created after the fault succeeded within {timeout}s")

    def longest_stall(self) -> float:
        """The longest time the succeeded count stood still while jobs were still to finish."""
        stall, since, last = 0.0, None, -1
        for at, done, _ in self.samples:
            if done != last:
                if since is not None:
                    stall = max(stall, at - since)
                since, last = at, done
        return stall

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        engine = create_async_engine(self.db_url)
        sql = text(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at > :f THEN 1 ELSE 0 END), 0) "
            "FROM jobs WHERE status = 'succeeded'"
        )
        try:
            while not self._stop.is_set():
                try:
                    async with engine.connect() as conn:
                        done, after = (await conn.execute(sql, {"f": self.fault_at or 1e12})).one()
                    self.samples.append((time.time(), int(done), int(after)))
                except (OSError, SQLAlchemyError):
                    pass  # the database is away (a fault test): no sample
                await asyncio.sleep(0.2)
        finally:
            await engine.dispose()


def stream_leader(cluster: EmbeddedCluster, stream: str, exclude: tuple[str, ...] = ()) -> str:
    """The server name of `stream`'s leader, waiting (10 s at most) while it has none."""
    deadline = time.monotonic() + 10
    while not (leader := cluster.leaders(exclude).get(stream, "")):
        assert time.monotonic() < deadline, f"{stream} has no leader"
        time.sleep(0.1)
    return leader
