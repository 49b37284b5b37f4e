"""Queue state from JetStream consumer info: depth, in flight, rates, and exact queue positions.

One consumer listing of JOBS (a request per 256 consumers) is cached for `ttl_s` and serves the
queues overview (listing 340 queues took ~110 ms, 55 ms of it the api's CPU; it grows with the
queues). A job's position is never cached: it needs its own consumer and those of the higher
priorities of its queue, read by concurrent consumer-info requests (~0.3 ms) that begin after the
position was asked for, alongside one Direct Get. Concurrent askers of one consumer share a read
(single flight): one that arrives while a read is under way waits for the next, which begins
after it arrived. So a position describes the queue as it was during its own request. Nothing
here scans the jobs table or the stream.
"""

import asyncio
import json
import logging
import time
from collections import deque

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from taskyard_common.topology import (
    PRIORITIES,
    ConsumerSnap,
    Topology,
    executor_consumers,
    oldest_waiting_age_s,
)

from .position import Position, add_sample, from_direct_get, rates_over, without_lookup
from .queue_history import DepthHistory

log = logging.getLogger("taskyard.api.queues")
RATE_WINDOW_S = 60.0
SHORT_WINDOW_S = 10.0
# Rates need a sample now and then, not one per position read (rates() walks the samples).
SAMPLE_EVERY_S = 0.25
# Without readers, a sample this often keeps the ETA's history recent (a supervised loop).
SAMPLE_INTERVAL_S = 2.0


class QueueState:
    def __init__(self, nc: NatsClient, js: JetStreamContext, topo: Topology, ttl_s: float = 0.5) -> None:
        self.nc, self.js, self.topo, self.ttl_s = nc, js, topo, ttl_s
        self._snaps: dict[tuple[str, str], ConsumerSnap] = {}
        self._at = 0.0
        self._lock = asyncio.Lock()
        # (queue, priority) → (when it began, snap) of the newest read of that consumer; its lock.
        self._reads: dict[tuple[str, str], tuple[float, ConsumerSnap]] = {}
        self._read_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # (time, deliveries, pending) per (queue, priority): rates without per-job bookkeeping.
        self._samples: dict[tuple[str, str], deque] = {}
        self.history = DepthHistory()

    async def snapshot(self) -> dict[tuple[str, str], ConsumerSnap]:
        if time.monotonic() - self._at > self.ttl_s:
            async with self._lock:
                if time.monotonic() - self._at > self.ttl_s:
                    await self._refresh()
        return self._snaps

    def invalidate(self) -> None:
        self._at = 0.0

    async def queue_snapshot(self, queue: str) -> dict[str, ConsumerSnap]:
        """priority → snap of one queue's consumers (empty: no such queue), read after this call."""
        snaps = await asyncio.gather(*(self.consumer(queue, p) for p in PRIORITIES))
        return {p: snap for p, snap in zip(PRIORITIES, snaps, strict=True) if snap}

    async def consumer(self, queue: str, priority: str) -> ConsumerSnap | None:
        """One executor consumer as read after this call began (None: no such consumer).

        Single flight: the lock is fair, so callers that arrive during read N queue behind the
        one that starts read N+1 and take its result, which began after all of them arrived.
        """
        key = (queue, priority)
        asked = time.monotonic()
        async with self._read_locks.setdefault(key, asyncio.Lock()):
            done = self._reads.get(key)
            if done and done[0] >= asked:
                return done[1]
            began = time.monotonic()
            durable = self.topo.exec_durable(queue, priority)
            try:
                info = await self.js.consumer_info(self.topo.jobs_stream, durable)
            except NotFoundError:
                return None  # not remembered: the queue's first job may create it any moment
            snap = self._sampled(ConsumerSnap.of(queue, priority, info))
            self._reads[key] = (began, snap)
            return snap

    async def _refresh(self) -> None:
        snaps = {}
        now = time.monotonic()
        for snap in await executor_consumers(self.js, self.topo):
            snaps[(snap.queue, snap.priority)] = self._sampled(snap)
        self._snaps, self._at = snaps, now

    def _sampled(self, snap: ConsumerSnap) -> ConsumerSnap:
        """Keep (time, deliveries, pending) of this read for `rates` (position.add_sample)."""
        samples = self._samples.setdefault((snap.queue, snap.priority), deque())
        point = (time.monotonic(), snap.delivered_consumer_seq, snap.num_pending)
        add_sample(samples, point, SAMPLE_EVERY_S, RATE_WINDOW_S + 5)
        return snap

    async def sample(self) -> None:
        """One sample of every consumer, so rate samples flow even when nobody asks."""
        async with self._lock:
            await self._refresh()
        self.history.record(self._snaps)

    def rates(self, queue: str, window_s: float = RATE_WINDOW_S) -> tuple[float, float]:
        """(deliveries/s, arrivals/s) of a queue over the last `window_s`, all priorities."""
        per_priority = [rates_over(self._samples.get((queue, p), ()), window_s) for p in PRIORITIES]
        return sum(r[0] for r in per_priority), sum(r[1] for r in per_priority)

    def queues(self) -> list[str]:
        return sorted({q for q, _ in self._snaps})

    async def position(self, queue: str, priority: str, seq: int) -> Position:
        """Exact position of stream sequence `seq` (see NATS_NOTES: Direct Get + num_pending).

        Consumer info and the Direct Get are asked at once, both after this call began. Jobs
        only leave the front and join the back, so num_pending − 1 − (jobs after `seq`) is the
        count before `seq` when the consumer info was read, give or take jobs submitted between
        the two reads (they lower it; the clamp keeps it ≥ 0).
        """
        subject = self.topo.job_subject(queue, priority)
        body = json.dumps({"seq": seq, "next_by_subj": subject, "batch": 1}).encode()
        # Only its own consumer and the higher priorities' count: a `high` job reads one.
        upto = PRIORITIES[: PRIORITIES.index(priority) + 1]
        lookup = self.nc.request(f"$JS.API.DIRECT.GET.{self.topo.jobs_stream}", body, timeout=5)
        snaps, reply = await asyncio.gather(asyncio.gather(*(self.consumer(queue, p) for p in upto)), lookup)
        if settled := without_lookup(snaps[-1], seq):
            return settled
        known = {p: snap for p, snap in zip(upto, snaps, strict=True) if snap}
        return from_direct_get(known, priority, seq, reply.headers or {})

    async def oldest_ages_s(self, snaps: list[ConsumerSnap]) -> list[float]:
        """Age of the oldest never-delivered job of each consumer (0 when none), read concurrently."""
        now = time.time()
        return await asyncio.gather(*(oldest_waiting_age_s(self.js, self.topo, s, now) for s in snaps))
