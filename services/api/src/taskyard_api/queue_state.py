"""Queue state from JetStream consumer info: depth, in flight, rates, and exact queue positions.

One consumer listing of JOBS (a request per 256 consumers) is cached for `ttl_s` and serves the
queues overview. A job's position needs only its own queue's three consumers: they come from that
listing while it is fresh, else from three consumer-info requests of their own, cached per queue
for `ttl_s` too (listing 340 queues took ~110 ms, 55 ms of it the api's CPU; it grows with the
queues). Plus one Direct Get per position asked for. Nothing here scans the jobs table or the stream.
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

from .position import Position, from_direct_get, rates_over, without_lookup

log = logging.getLogger("taskyard.api.queues")
RATE_WINDOW_S = 60.0
SHORT_WINDOW_S = 10.0
SAMPLE_INTERVAL_S = 2.0


class QueueState:
    def __init__(self, nc: NatsClient, js: JetStreamContext, topo: Topology, ttl_s: float = 0.5) -> None:
        self.nc, self.js, self.topo, self.ttl_s = nc, js, topo, ttl_s
        self._snaps: dict[tuple[str, str], ConsumerSnap] = {}
        self._at = 0.0
        self._lock = asyncio.Lock()
        # queue → (when, priority → snap) for queues read on their own, and a lock per queue.
        self._by_queue: dict[str, tuple[float, dict[str, ConsumerSnap]]] = {}
        self._queue_locks: dict[str, asyncio.Lock] = {}
        # (time, deliveries, pending) per (queue, priority): rates without per-job bookkeeping.
        self._samples: dict[tuple[str, str], deque] = {}

    async def snapshot(self) -> dict[tuple[str, str], ConsumerSnap]:
        if time.monotonic() - self._at > self.ttl_s:
            async with self._lock:
                if time.monotonic() - self._at > self.ttl_s:
                    await self._refresh()
        return self._snaps

    def invalidate(self) -> None:
        self._at = 0.0
        self._by_queue.clear()

    async def queue_snapshot(self, queue: str) -> dict[str, ConsumerSnap]:
        """priority → snap of one queue's consumers (empty: no such queue), at most `ttl_s` old."""
        if time.monotonic() - self._at <= self.ttl_s and (listed := self._listed(queue)):
            return listed
        if fresh := self._read_lately(queue):
            return fresh
        # As in snapshot(): concurrent requests for one queue wait for one read.
        async with self._queue_locks.setdefault(queue, asyncio.Lock()):
            return self._read_lately(queue) or await self._read_queue(queue)

    def _read_lately(self, queue: str) -> dict[str, ConsumerSnap] | None:
        cached = self._by_queue.get(queue)
        return cached[1] if cached and time.monotonic() - cached[0] <= self.ttl_s else None

    def _listed(self, queue: str) -> dict[str, ConsumerSnap]:
        return {p: snap for p in PRIORITIES if (snap := self._snaps.get((queue, p)))}

    async def _read_queue(self, queue: str) -> dict[str, ConsumerSnap]:
        at = time.monotonic()
        durables = [self.topo.exec_durable(queue, p) for p in PRIORITIES]
        infos = await asyncio.gather(
            *(self.js.consumer_info(self.topo.jobs_stream, d) for d in durables), return_exceptions=True
        )
        snaps = {}
        for priority, info in zip(PRIORITIES, infos, strict=True):
            if isinstance(info, NotFoundError):
                continue
            if isinstance(info, BaseException):
                raise info
            snaps[priority] = self._sampled(ConsumerSnap.of(queue, priority, info))
        if snaps:  # no such queue is not remembered: its first job may create it any moment
            self._by_queue[queue] = (at, snaps)
        return snaps

    async def _refresh(self) -> None:
        snaps = {}
        now = time.monotonic()
        for snap in await executor_consumers(self.js, self.topo):
            snaps[(snap.queue, snap.priority)] = self._sampled(snap)
        self._snaps, self._at = snaps, now

    def _sampled(self, snap: ConsumerSnap) -> ConsumerSnap:
        """Keep (time, deliveries, pending) of every read for `rates`."""
        now = time.monotonic()
        samples = self._samples.setdefault((snap.queue, snap.priority), deque())
        samples.append((now, snap.delivered_consumer_seq, snap.num_pending))
        while samples and now - samples[0][0] > RATE_WINDOW_S + 5:
            samples.popleft()
        return snap

    async def sample(self) -> None:
        """One sample; run every SAMPLE_INTERVAL_S so rate samples flow even when nobody asks
        (ETA needs a recent history)."""
        async with self._lock:
            await self._refresh()

    def rates(self, queue: str, window_s: float = RATE_WINDOW_S) -> tuple[float, float]:
        """(deliveries/s, arrivals/s) of a queue over the last `window_s`, all priorities."""
        per_priority = [rates_over(self._samples.get((queue, p), ()), window_s) for p in PRIORITIES]
        return sum(r[0] for r in per_priority), sum(r[1] for r in per_priority)

    def queues(self) -> list[str]:
        return sorted({q for q, _ in self._snaps})

    async def position(self, queue: str, priority: str, seq: int) -> Position:
        """Exact position of stream sequence `seq` (see NATS_NOTES: Direct Get + num_pending)."""
        snaps = await self.queue_snapshot(queue)
        if settled := without_lookup(snaps.get(priority), seq):
            return settled
        subject = self.topo.job_subject(queue, priority)
        body = json.dumps({"seq": seq, "next_by_subj": subject, "batch": 1}).encode()
        reply = await self.nc.request(f"$JS.API.DIRECT.GET.{self.topo.jobs_stream}", body, timeout=5)
        return from_direct_get(snaps, priority, seq, reply.headers or {})

    async def oldest_ages_s(self, snaps: list[ConsumerSnap]) -> list[float]:
        """Age of the oldest never-delivered job of each consumer (0 when none), read concurrently."""
        now = time.time()
        return await asyncio.gather(*(oldest_waiting_age_s(self.js, self.topo, s, now) for s in snaps))
