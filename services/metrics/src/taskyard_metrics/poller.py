"""Queue and worker gauges read from JetStream every few seconds and served from a cached snapshot.

Reading consumer info and the workers KV costs round trips to NATS, so it is done on a timer and
never per scrape: many scrapers (or a fast one) cannot load the server.
"""

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskyard_common.heartbeats import HeartbeatReader
from taskyard_common.schemas import Heartbeat
from taskyard_common.topology import Topology, executor_consumers, oldest_waiting_age_s

from .registry import Metrics
from .state import ServiceState

log = logging.getLogger("taskyard.metrics.poller")

# One poll may not hang on a half-dead connection for longer than this.
POLL_DEADLINE_S = 10.0


@dataclass(frozen=True)
class QueueState:
    """One executor consumer: a (queue, priority) pair."""

    queue: str
    priority: str
    depth: int
    in_flight: int
    waiting_pulls: int
    redelivered: int
    oldest_age_s: float


@dataclass(frozen=True)
class WorkerTotals:
    """Workers counted from their heartbeats; slots only of live (healthy or draining) workers."""

    healthy: int = 0
    stale: int = 0
    draining: int = 0
    slots_total: int = 0
    slots_used: int = 0
    # Healthy (pulling) workers per queue they serve: a draining or stale worker takes no new job.
    per_queue: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """Everything one poll read; swapped in whole so a scrape never mixes two polls."""

    queues: tuple[QueueState, ...] = ()
    workers: WorkerTotals = field(default_factory=WorkerTotals)
    at: float = field(default_factory=time.time)
    # Queues of every live (healthy or draining) worker by id, and the ids whose heartbeat is stale:
    # what the next poll compares against to count lost workers.
    live: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stale: frozenset[str] = frozenset()


async def read_queues(js: JetStreamContext, topo: Topology, now: float) -> tuple[QueueState, ...]:
    """Per (queue, priority) figures from the executor consumers on the JOBS stream."""
    consumers = await executor_consumers(js, topo)
    ages = await asyncio.gather(*(oldest_waiting_age_s(js, topo, c, now) for c in consumers))
    return tuple(
        QueueState(
            queue=c.queue,
            priority=c.priority,
            depth=c.num_pending,
            in_flight=c.num_ack_pending,
            waiting_pulls=c.num_waiting,
            redelivered=c.num_redelivered,
            oldest_age_s=age,
        )
        for c, age in zip(consumers, ages, strict=True)
    )


def count_workers(beats: list[Heartbeat], healthy_within_s: float, now: float) -> WorkerTotals:
    """Classify heartbeats: stale when older than `healthy_within_s`, else draining or healthy."""
    healthy = stale = draining = slots_total = slots_used = 0
    per_queue: dict[str, int] = {}
    for hb in beats:
        if now - hb.at > healthy_within_s:
            stale += 1
            continue
        if hb.state == "draining":
            draining += 1
        else:
            healthy += 1
            for queue in set(hb.queues):
                per_queue[queue] = per_queue.get(queue, 0) + 1
        slots_total += hb.slots
        slots_used += len(hb.running)
    return WorkerTotals(healthy, stale, draining, slots_total, slots_used, per_queue)


def split_live(
    beats: list[Heartbeat], healthy_within_s: float, now: float
) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """({worker id: queues} of live workers, ids of stale ones), by the same rule as count_workers."""
    live = {hb.id: tuple(hb.queues) for hb in beats if now - hb.at <= healthy_within_s}
    return live, frozenset(hb.id for hb in beats if hb.id not in live)


async def exited_cleanly(js: JetStreamContext, topo: Topology, worker_id: str) -> bool:
    """Whether a worker's missing key was deleted (a drained exit) rather than expired (a silent one).

    A delete leaves a marker until the bucket's TTL removes it; an expired key leaves nothing. A key
    that is back (a heartbeat landed between the two reads) is not a loss either.
    """
    kv = await js.key_value(topo.workers_bucket)
    try:
        entry = await kv.get(worker_id)
    except KeyNotFoundError as err:
        return err.op in ("DEL", "PURGE")
    return entry.value is not None


async def lost_workers(
    js: JetStreamContext, topo: Topology, before: Mapping[str, tuple[str, ...]], snap: Snapshot
) -> list[tuple[str, ...]]:
    """Queues of each worker live at the previous poll that is now stale or expired without a clean exit."""
    lost = []
    for worker_id, queues in before.items():
        if worker_id in snap.live:
            continue
        if worker_id in snap.stale or not await exited_cleanly(js, topo, worker_id):
            lost.append(queues)
    return lost


async def poll_once(js: JetStreamContext, topo: Topology, heartbeats: HeartbeatReader) -> Snapshot:
    """Read queue and worker state once."""
    now = time.time()
    queues = await read_queues(js, topo, now)
    beats = await heartbeats.read()
    healthy_within_s = 2 * topo.settings.heartbeat_interval_s
    workers = count_workers(beats, healthy_within_s, now)
    live, stale = split_live(beats, healthy_within_s, now)
    return Snapshot(queues=queues, workers=workers, at=now, live=live, stale=stale)


class SnapshotCollector(Collector):
    """Serves the last Snapshot as gauges; collect() does no I/O."""

    def __init__(self) -> None:
        # None until the first poll: absent gauges are more honest than zeros nobody measured.
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # read once: the poller may swap it meanwhile
        if snap is None:
            return
        labels = ["queue", "priority"]
        families = {
            "depth": GaugeMetricFamily(
                "taskyard_queue_depth", "Messages not yet delivered to any worker.", labels=labels
            ),
            "in_flight": GaugeMetricFamily(
                "taskyard_queue_in_flight", "Messages delivered and not yet acked (running).", labels=labels
            ),
            "waiting_pulls": GaugeMetricFamily(
                "taskyard_queue_waiting_pulls",
                "Pull requests waiting for messages (idle workers).",
                labels=labels,
            ),
            "redelivered": GaugeMetricFamily(
                "taskyard_queue_redelivered",
                "Unacked messages that were delivered more than once.",
                labels=labels,
            ),
            "oldest_age_s": GaugeMetricFamily(
                "taskyard_queue_oldest_age_seconds",
                "Age of the oldest undelivered message, 0 when the queue is empty.",
                labels=labels,
            ),
        }
        for q in snap.queues:
            for attr, family in families.items():
                family.add_metric([q.queue, q.priority], getattr(q, attr))
        yield from families.values()
        w = snap.workers
        workers = GaugeMetricFamily(
            "taskyard_workers", "Workers by heartbeat state (healthy, stale, draining).", labels=["state"]
        )
        for state in ("healthy", "stale", "draining"):
            workers.add_metric([state], getattr(w, state))
        yield workers
        yield GaugeMetricFamily(
            "taskyard_worker_slots_total", "Job slots of live workers.", value=w.slots_total
        )
        yield GaugeMetricFamily(
            "taskyard_worker_slots_used", "Jobs running on live workers.", value=w.slots_used
        )
        # Every known queue, 0 included: "jobs queued and nobody to run them" must be a visible 0.
        per_queue = GaugeMetricFamily(
            "taskyard_queue_workers",
            "Healthy workers serving the queue (draining and stale ones take no new jobs).",
            labels=["queue"],
        )
        for queue in sorted({q.queue for q in snap.queues} | set(w.per_queue)):
            per_queue.add_metric([queue], w.per_queue.get(queue, 0))
        yield per_queue


async def run_poller(
    js: JetStreamContext,
    topo: Topology,
    metrics: Metrics,
    collector: SnapshotCollector,
    interval_s: float,
    state: ServiceState,
) -> None:
    """Poll forever. On failure the last snapshot stays and the error shows in /readyz and metrics."""
    failing = False
    # Live workers at the last successful poll. A clean exit's delete marker lives one bucket TTL,
    # so that set is only compared while it is younger than the TTL: after a longer outage a worker
    # that exited cleanly may have left no trace. A single slow poll on a busy box forgets nothing.
    before: Mapping[str, tuple[str, ...]] = {}
    before_at = 0.0
    marker_ttl_s = topo.workers_ttl_s
    heartbeats = HeartbeatReader(js, topo)
    while True:
        started = time.monotonic()
        try:
            async with asyncio.timeout(POLL_DEADLINE_S):
                snapshot = await poll_once(js, topo, heartbeats)
                if snapshot.at - before_at > marker_ttl_s:
                    before = {}
                lost = await lost_workers(js, topo, before, snapshot)
        except (nats.errors.Error, TimeoutError) as err:
            metrics.poll_errors.inc()
            if not failing:
                # Logged once per outage: NATS being down would otherwise log every interval.
                log.warning("reading JetStream state failed: %r (quiet until it recovers)", err)
            failing = True
            state.poll = f"reading JetStream state failed: {err!r}"
        else:
            for queues in snapshot.live.values():
                for queue in queues:
                    metrics.workers_lost.labels(queue)  # exported at 0 so increase() sees the first loss
            for queues in lost:
                for queue in set(queues):
                    metrics.workers_lost.labels(queue).inc()
            if lost:
                log.warning("%d worker(s) stopped heartbeating without a clean exit", len(lost))
            before, before_at = snapshot.live, snapshot.at
            collector.snapshot = snapshot
            metrics.last_poll.set(snapshot.at)
            if failing:
                log.info("reading JetStream state works again")
            failing = False
            state.poll, state.last_poll_ok = "ok", snapshot.at
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
