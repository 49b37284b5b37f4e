"""The metrics service's EVENTS handler behind FastStream's batch pull subscriber, in memory
(TestNatsBroker): what it counts, what it acks, and what a failed ack does to the consumer."""

import nats.errors
import pytest
from faststream.nats import TestNatsBroker
from faststream.nats.testing import PatchedMessage

from taskyard_common.schemas import EventBatch, JobEvent
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology
from taskyard_metrics.events import events_consumer
from taskyard_metrics.registry import Metrics
from taskyard_metrics.settings import MetricsSettings

TOPO = Topology(NatsSettings(prefix="fs"))


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(subject, ack|nak|term) of every in-memory message, in order."""
    seen: list[tuple[str, str]] = []

    def record(kind: str):
        async def call(self: PatchedMessage, *args: object, **kwargs: object) -> None:
            seen.append((self.subject, kind))

        return call

    for kind in ("ack", "nak", "term"):
        monkeypatch.setattr(PatchedMessage, kind, record(kind))
    return seen


def event(job_id: str, kind: str, **data: float) -> JobEvent:
    return JobEvent(job_id=job_id, type=kind, queue="q", priority="normal", job_type="noop", data=data)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def consumer(metrics: Metrics):
    return events_consumer(None, TOPO, metrics, MetricsSettings())  # type: ignore[arg-type]


async def publish(broker, body: bytes, subject: str) -> None:
    await broker.publish(body, subject, stream=TOPO.events_stream)


async def test_a_job_event_is_counted_and_acked(acks) -> None:
    metrics = Metrics()
    c = consumer(metrics)
    async with TestNatsBroker(c.build()) as broker:
        await publish(
            broker, event("a", "started", wait_s=0.5).model_dump_json().encode(), TOPO.event_subject("a")
        )
        await publish(
            broker,
            event("a", "succeeded", duration_s=1.0).model_dump_json().encode(),
            TOPO.event_subject("a"),
        )
    assert sample(metrics, "taskyard_jobs_started_total", queue="q", type="noop") == 1
    assert sample(metrics, "taskyard_jobs_finished_total", queue="q", type="noop", status="succeeded") == 1
    assert sample(metrics, "taskyard_events_processed_total") == 2
    assert acks == [(TOPO.event_subject("a"), "ack")] * 2
    assert c.error is None


async def test_an_event_batch_on_the_queued_subject_counts_each_of_its_events(acks) -> None:
    metrics = Metrics()
    c = consumer(metrics)
    body = EventBatch(events=[event(j, "queued") for j in "abc"]).model_dump_json().encode()
    async with TestNatsBroker(c.build()) as broker:
        await publish(broker, body, TOPO.queued_subject)
    assert sample(metrics, "taskyard_jobs_submitted_total", queue="q", type="noop") == 3
    assert sample(metrics, "taskyard_events_processed_total") == 1
    assert acks == [(TOPO.queued_subject, "ack")]


async def test_a_malformed_body_is_counted_as_invalid_and_acked(acks) -> None:
    metrics = Metrics()
    c = consumer(metrics)
    async with TestNatsBroker(c.build()) as broker:
        await publish(broker, b"{not json", TOPO.event_subject("x"))
        await publish(broker, b'{"job_id": "x"}', TOPO.queued_subject)  # not an EventBatch
    assert sample(metrics, "taskyard_events_invalid_total") == 2
    assert sample(metrics, "taskyard_events_processed_total") == 2
    assert [kind for _, kind in acks] == ["ack", "ack"]
    assert c.error is None


async def test_a_failed_ack_ends_the_run_and_later_batches_are_handed_back(acks, monkeypatch) -> None:
    metrics = Metrics()
    c = consumer(metrics)

    async def lost(self: PatchedMessage) -> None:
        raise nats.errors.ConnectionClosedError

    async with TestNatsBroker(c.build()) as broker:
        monkeypatch.setattr(PatchedMessage, "ack", lost)
        await publish(broker, event("a", "started").model_dump_json().encode(), TOPO.event_subject("a"))
        # NATS went away: run() raises this (run_consumer re-subscribes after a second).
        assert isinstance(c.error, nats.errors.ConnectionClosedError)
        # A batch fetched before the run ended is handed back, not counted.
        await publish(broker, event("b", "started").model_dump_json().encode(), TOPO.event_subject("b"))
    assert sample(metrics, "taskyard_jobs_started_total", queue="q", type="noop") == 1  # a, counted once
    assert sample(metrics, "taskyard_events_processed_total") == 0
    assert acks == [(TOPO.event_subject("b"), "nak")]
