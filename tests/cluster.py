"""Helpers of the JetStream-cluster tests: a steady submit load, a sampler of finished jobs that
times the recovery after a fault, and the stream and consumer leaders from nats-server's /jsz."""

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskyard_common.embedded import EmbeddedCluster

from .stack import Stack


@dataclass
class Load:
    """Batches of jobs at `rate` jobs/s from `threads` clients until stopped: mostly `noop`, a
    fifth `chaos` jobs that sleep 2–10 ms (executors busy). A batch the api refuses is not retried
    (it wrote nothing: the api refuses before writing while it has no NATS connection)."""

    stack: Stack
    rate: float = 600
    batch: int = 50
    threads: int = 3
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
        """Jobs/s accepted from 1 s after the start until `until` (monotonic): the load before a
        fault, when the api answers at once."""
        since = self.started_at + 1
        jobs = sum(n for at, n in self.answered if since <= at <= until)
        return jobs / max(1e-9, until - since)

    def _specs(self, rng: random.Random) -> list[dict]:
        return [
            {"type": "chaos", "payload": {"sleep": rng.uniform(0.002, 0.01)}}
            if rng.random() < 0.2
            else {"type": "noop"}
            for _ in range(self.batch)
        ]

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        interval = self.batch * self.threads / self.rate
        next_at = time.monotonic() + worker * interval / self.threads
        with self.stack.http() as c:
            while not self._stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                # A late answer is not made up by a burst: the offered load stays steady.
                next_at = max(next_at + interval, time.monotonic())
                try:
                    r = c.post("/api/v1/jobs:batch", json={"jobs": self._specs(rng)})
                except Exception as exc:  # noqa: BLE001 - recorded; the test fails on it
                    self.refused.append(repr(exc))
                    continue
                if r.status_code == 201:
                    with self._lock:
                        self.accepted |= {j["id"] for j in r.json()["jobs"]}
                        self.answered.append((time.monotonic(), self.batch))
                else:
                    self.refused.append(f"{r.status_code} {r.text[:200]}")


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
                async with engine.connect() as conn:
                    done, after = (await conn.execute(sql, {"f": self.fault_at or 1e12})).one()
                self.samples.append((time.time(), int(done), int(after)))
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
