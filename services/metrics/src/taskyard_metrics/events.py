"""Turning JobEvents from the EVENTS stream into counters and histograms."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from taskyard_common.coalesce import carried
from taskyard_common.schemas import JobEvent, message_events
from taskyard_common.topology import Topology

from .batch_consumer import BatchConsumer
from .registry import Metrics
from .settings import MetricsSettings
from .state import ServiceState

log = logging.getLogger("taskyard.metrics.events")

FINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled", "dead"})
# Events after which the executor reports how long the attempt ran (data["duration_s"]).
TIMED_EVENTS = FINAL_EVENTS | {"retrying"}
# Outcomes that carry an attempt's usage and costs (taskyard_common.usage).
USAGE_EVENTS = TIMED_EVENTS | {"waiting"}
UNKNOWN = "unknown"
# taskyard_job_wait_target_total{outcome}: the attempt started within its queue's wait target or not.
WAIT_OUTCOMES = ("met", "missed")


def _number(value: object) -> float | None:
    """A non-negative duration from event data, or None when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


def init_series(metrics: Metrics, queue: str, job_type: str) -> None:
    """Export every counter of a (queue, type) at 0 from its first event on.

    Prometheus' rate()/increase() cannot see the first increment of a series that appears with the
    value 1, so without this the first dead job of a queue would never raise an alert. Once per
    (queue, type): no series is ever removed, and the wait targets are fixed at start.
    """
    if (queue, job_type) in metrics.initialised:
        return
    metrics.initialised.add((queue, job_type))
    metrics.submitted.labels(queue, job_type)
    metrics.started.labels(queue, job_type)
    metrics.retries.labels(queue, job_type)
    metrics.worker_lost.labels(queue)
    for outcome in WAIT_OUTCOMES:
        metrics.wait_slo.labels(queue, outcome)
    metrics.wait_target.labels(queue).set(metrics.target_for(queue))
    for status in FINAL_EVENTS:
        metrics.finished.labels(queue, job_type, status)


def record_event(metrics: Metrics, event: JobEvent, started: dict[str, Any] | None = None) -> None:
    """Update the metrics for one lifecycle event (pure bookkeeping, no I/O). With `started` (what
    an outcome carries, coalesce.carried): that start instead, read from it in place (the outcome's
    queue, type and priority are the start's); a copy of the event for it cost ~3 µs a job."""
    queue = event.queue or UNKNOWN
    job_type = event.job_type or UNKNOWN
    priority = event.priority or UNKNOWN
    kind = event.type if started is None else "started"
    child = metrics.child
    init_series(metrics, queue, job_type)
    if kind == "queued":
        child(metrics.submitted, queue, job_type).inc()
    elif kind == "started":
        child(metrics.started, queue, job_type).inc()
        wait = _number((event.data if started is None else started).get("wait_s"))
        if wait is not None:
            child(metrics.queue_wait, queue, priority).observe(wait)
            outcome = "met" if wait <= metrics.target_for(queue) else "missed"
            child(metrics.wait_slo, queue, outcome).inc()
    elif kind == "retrying":
        child(metrics.retries, queue, job_type).inc()
    elif kind == "worker_lost":
        child(metrics.worker_lost, queue).inc()
    elif kind == "waiting":
        ck_kind = (event.data.get("checkpoint") or {}).get("kind", UNKNOWN)
        # From event data, maybe not even hashable: labels() makes a string of it (rare events).
        metrics.checkpoints_requested.labels(queue, ck_kind).inc()
    elif kind == "decided":
        decision = event.data.get("decision") or {}
        waited = _number(decision.get("waited_s"))
        if waited is not None:
            metrics.checkpoint_decision.labels(
                queue, event.data.get("kind", UNKNOWN), decision.get("status", UNKNOWN)
            ).observe(waited)
    if kind in FINAL_EVENTS and not (kind == "cancelled" and event.worker_id):
        # Every cancel is the API's `cancelled` event; a worker's own `cancelled` (worker_id set)
        # only reports that the running attempt stopped, and how long it ran.
        child(metrics.finished, queue, job_type, kind).inc()
    if kind in USAGE_EVENTS:
        metrics.costs.record(event, queue, job_type)
    if kind in TIMED_EVENTS:
        # A job cancelled while still queued never ran: no duration_s, nothing to observe.
        duration = _number(event.data.get("duration_s"))
        if duration is not None:
            child(metrics.run_duration, queue, priority).observe(duration)


def record_message(metrics: Metrics, data: bytes, batch: bool = False) -> None:
    """Parse one EVENTS message body and record it: a JobEvent, or with `batch` an EventBatch (the
    API's `queued` announcements, an executor's batch: Topology.is_batch_subject). Malformed bodies
    are counted, not retried."""
    try:
        events = message_events(data, batch)
    except ValidationError as err:
        metrics.events_invalid.inc()
        log.warning(
            "skipping an EVENTS message that is not a %s: %s",
            "batch of events" if batch else "JobEvent",
            err.errors(include_url=False, include_input=False)[:1],
        )
        return
    for event in events:
        # An outcome carrying its `started` (coalesced by the executor) counts as both events.
        if (started := carried(event)) is not None:
            record_event(metrics, event, started)
        record_event(metrics, event)


def consumer_config(topo: Topology) -> ConsumerConfig:
    """The metrics service's durable pull consumer on EVENTS."""
    return ConsumerConfig(
        durable_name=topo.metrics_durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        filter_subject=topo.event_subject(">"),
        # A batch is acked message by message right after it is counted; 30 s is plenty.
        ack_wait=30.0,
        max_ack_pending=10_000,
        num_replicas=topo.settings.replicas,
    )


async def subscribe(js: JetStreamContext, topo: Topology) -> None:
    """Create or update the durable consumer (idempotent); FastStream then binds to it (its
    pull_subscribe only creates a consumer that is missing, it never updates one)."""
    await js.add_consumer(topo.events_stream, consumer_config(topo))


def consume(metrics: Metrics, topo: Topology) -> Callable[[list[Msg]], Awaitable[None]]:
    """The batch handler: record each message, ack it, count it.

    Delivery is at-least-once: a batch counted but not acked before a disconnect is delivered again
    and counted twice. That is acceptable for rates and far better than losing events.
    """
    is_batch = topo.is_batch_subject

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            record_message(metrics, msg.data, batch=is_batch(msg.subject))
            await msg.ack()
            metrics.events_processed.inc()

    return handle


def events_consumer(
    nc: NatsClient, topo: Topology, metrics: Metrics, settings: MetricsSettings
) -> BatchConsumer:
    """FastStream's batch pull subscriber on the metrics durable (taskyard_metrics.batch_consumer
    says which FastStream settings and why). `fetch_batch` messages or `fetch_timeout_s` (1 s),
    whichever comes first: counters a second late are fine, and an idle stream costs one pull a
    second."""
    return BatchConsumer(
        nc,
        stream=topo.events_stream,
        subject=topo.event_subject(">"),
        durable=topo.metrics_durable,
        config=consumer_config(topo),
        batch=settings.fetch_batch,
        window_s=settings.fetch_timeout_s,
        handle=consume(metrics, topo),
        logger=log,
    )


async def run_consumer(
    nc: NatsClient,
    topo: Topology,
    metrics: Metrics,
    settings: MetricsSettings,
    state: ServiceState,
    consumer: BatchConsumer | None = None,
) -> None:
    """Keep the EVENTS consumer going for the life of the process (or until `consumer.stop()`),
    re-creating it after errors.

    nats-py reconnects on its own; what it cannot fix is a consumer that vanished (a server that lost
    its store, an operator deleting it), so on any NATS error the consumer is ensured again.
    """
    consumer = consumer or events_consumer(nc, topo, metrics, settings)
    js = nc.jetstream()
    while not consumer.stopping:
        try:
            await subscribe(js, topo)
        except (nats.errors.Error, TimeoutError) as err:
            state.consumer = f"cannot create consumer {topo.metrics_durable}: {err!r}"
            log.warning("%s; retrying", state.consumer)
            await asyncio.sleep(1.0)
            continue
        state.consumer = "ok"
        try:
            await consumer.run()
        except (nats.errors.Error, TimeoutError) as err:
            state.consumer = f"fetch failed: {err!r}"
            log.warning("EVENTS consumer: %s; re-subscribing", state.consumer)
            await asyncio.sleep(1.0)
