"""The metrics service against a real nats-server: EVENTS → counters, JetStream/KV → gauges, /readyz."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskyard_common.coalesce import carry
from taskyard_common.embedded import EmbeddedNats
from taskyard_common.schemas import EventBatch, Heartbeat, JobEvent
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology, ensure_queue, ensure_streams

from .stack import free_port

TOPO = Topology(NatsSettings())


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        store_dir=tmp_path / "jetstream",
        port=free_port(),
        monitor_port=free_port(),
        log_file=tmp_path / "nats.log",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def metrics_url(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[str]:
    """`python -m taskyard_metrics` as a subprocess, exactly as it is deployed; yields its base URL."""
    port = free_port()
    env = {**os.environ, "TASKYARD_NATS_URL": nats_server.url, "TASKYARD_METRICS_PORT": str(port)}
    log_path = tmp_path / "metrics.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskyard_metrics"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while status_sync(url + "/readyz") != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"metrics service not ready:\n{tail(log_path)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Shown by pytest only when the test failed: the service's own account of what happened.
    print(tail(log_path))


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def status_sync(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


async def status(url: str) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url)).status_code
    except httpx.TransportError:
        return None


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(url + "/metrics")
    resp.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def event(job_id: str, kind: str, queue: str, priority: str, job_type: str, **data: float) -> JobEvent:
    return JobEvent(job_id=job_id, type=kind, queue=queue, priority=priority, job_type=job_type, data=data)


def lifecycle_events() -> list[JobEvent]:
    evs = []
    for job_id in ("a", "b"):
        evs += [
            event(job_id, "queued", "default", "normal", "shell"),
            event(job_id, "started", "default", "normal", "shell", wait_s=0.5),
            event(job_id, "succeeded", "default", "normal", "shell", duration_s=1.5),
        ]
    # A quick job: the executor sent its `started` inside its outcome; counted exactly as a and b.
    started = event("c", "started", "default", "normal", "shell", wait_s=0.5)
    evs += [
        event("c", "queued", "default", "normal", "shell"),
        carry(event("c", "succeeded", "default", "normal", "shell", duration_s=1.5), started),
    ]
    evs += [
        event("d", "queued", "batch", "high", "python"),
        event("d", "started", "batch", "high", "python", wait_s=2.0),
        event("d", "retrying", "batch", "high", "python", duration_s=0.2),
        event("d", "started", "batch", "high", "python", wait_s=1.0),
        event("d", "failed", "batch", "high", "python", duration_s=0.3),
        event("e", "queued", "default", "normal", "shell"),
        event("e", "cancelled", "default", "normal", "shell"),  # cancelled while queued: never ran
        event("f", "queued", "default", "low", "noop"),
        event("f", "started", "default", "low", "noop", wait_s=0.1),
        event("f", "worker_lost", "default", "low", "noop"),
        event("f", "dead", "default", "low", "noop", duration_s=30.0),
    ]
    return evs


def heartbeat(worker_id: str, **fields) -> bytes:
    base = {
        "host": "h",
        "pid": 1,
        "version": "0",
        "queues": ["default"],
        "slots": 4,
        "started_at": time.time(),
    }
    return Heartbeat(id=worker_id, **{**base, **fields}).model_dump_json().encode()


async def test_events_jobs_and_workers_become_metrics(nats_server: EmbeddedNats, metrics_url: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, TOPO)
        await ensure_queue(js, TOPO, "default")
        evs = lifecycle_events()
        # As the API sends them: its `queued` announcements in one batch message, the rest one
        # event per message on the job's subject.
        queued = EventBatch(events=[ev for ev in evs if ev.type == "queued"])
        await js.publish(TOPO.queued_subject, queued.model_dump_json().encode())
        for ev in evs:
            if ev.type != "queued":
                await js.publish(TOPO.event_subject(ev.job_id), ev.model_dump_json().encode())
        await js.publish(TOPO.event_subject("junk"), b"not json")  # counted as invalid, acked, not fatal
        for i in range(4):
            await js.publish(TOPO.job_subject("default", "normal"), b"{}", headers={"Nats-Msg-Id": f"n{i}"})
        await js.publish(TOPO.job_subject("default", "high"), b"{}", headers={"Nats-Msg-Id": "h0"})
        kv = await js.key_value(TOPO.workers_bucket)
        await kv.put(
            "w-healthy",
            heartbeat(
                "w-healthy",
                running=[{"id": "j1", "type": "noop", "queue": "default", "started_at": time.time()}],
            ),
        )
        await kv.put(
            "w-draining",
            heartbeat(
                "w-draining",
                slots=2,
                running=[{"id": "j2", "type": "noop", "queue": "default", "started_at": time.time()}],
                state="draining",
            ),
        )
        await kv.put("w-stale", heartbeat("w-stale", at=time.time() - 60))
    finally:
        await nc.close()

    # Messages: one per non-`queued` event, the announcement batch, and the junk one.
    expected_events = sum(ev.type != "queued" for ev in evs) + 2

    async def caught_up() -> bool:
        s = await scrape(metrics_url)
        return (
            value(s, "taskyard_events_processed_total") == expected_events
            and value(s, "taskyard_workers", state="healthy") == 1
            and value(s, "taskyard_queue_depth", queue="default", priority="normal") == 4
        )

    await wait_until(caught_up, 20, "metrics to reflect the published events and state")
    s = await scrape(metrics_url)

    assert value(s, "taskyard_jobs_submitted_total", queue="default", type="shell") == 4
    assert value(s, "taskyard_jobs_submitted_total", queue="batch", type="python") == 1
    assert value(s, "taskyard_jobs_started_total", queue="batch", type="python") == 2
    assert value(s, "taskyard_jobs_finished_total", queue="default", type="shell", status="succeeded") == 3
    assert value(s, "taskyard_jobs_finished_total", queue="default", type="shell", status="cancelled") == 1
    assert value(s, "taskyard_jobs_finished_total", queue="batch", type="python", status="failed") == 1
    assert value(s, "taskyard_jobs_finished_total", queue="default", type="noop", status="dead") == 1
    assert value(s, "taskyard_job_retries_total", queue="batch", type="python") == 1
    assert value(s, "taskyard_job_worker_lost_total", queue="default") == 1
    assert value(s, "taskyard_events_invalid_total") == 1

    # The queued-then-cancelled job never ran, so it adds no run duration.
    assert value(s, "taskyard_job_run_duration_seconds_count", queue="default", priority="normal") == 3
    assert value(s, "taskyard_job_run_duration_seconds_sum", queue="default", priority="normal") == 4.5
    assert value(s, "taskyard_job_run_duration_seconds_count", queue="batch", priority="high") == 2
    assert value(s, "taskyard_job_queue_wait_seconds_count", queue="default", priority="normal") == 3
    assert value(s, "taskyard_job_queue_wait_seconds_sum", queue="batch", priority="high") == 3.0
    assert value(s, "taskyard_job_queue_wait_seconds_bucket", queue="default", priority="low", le="0.1") == 1

    assert value(s, "taskyard_queue_depth", queue="default", priority="normal") == 4
    assert value(s, "taskyard_queue_depth", queue="default", priority="high") == 1
    assert value(s, "taskyard_queue_depth", queue="default", priority="low") == 0
    assert value(s, "taskyard_queue_in_flight", queue="default", priority="normal") == 0
    assert value(s, "taskyard_queue_waiting_pulls", queue="default", priority="normal") == 0
    assert value(s, "taskyard_queue_redelivered", queue="default", priority="normal") == 0
    age = value(s, "taskyard_queue_oldest_age_seconds", queue="default", priority="normal")
    assert age is not None and 0 < age < 120
    assert value(s, "taskyard_queue_oldest_age_seconds", queue="default", priority="low") == 0

    assert value(s, "taskyard_workers", state="healthy") == 1
    assert value(s, "taskyard_workers", state="draining") == 1
    assert value(s, "taskyard_workers", state="stale") == 1
    assert value(s, "taskyard_worker_slots_total") == 6  # the stale worker's slots do not count
    assert value(s, "taskyard_worker_slots_used") == 2

    assert value(s, "taskyard_metrics_up") == 1
    assert value(s, "taskyard_metrics_nats_connected") == 1
    assert value(s, "process_resident_memory_bytes")
    assert not any("job_id" in dict(labels) for _, labels in s)


async def test_readyz_follows_nats_and_consumer_resumes(nats_server: EmbeddedNats, metrics_url: str) -> None:
    nats_server.stop()

    async def unready() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(metrics_url + "/readyz")
        return resp.status_code == 503 and resp.json()["checks"]["nats"] != "ok"

    await wait_until(unready, 15, "/readyz to report NATS down")
    assert await status(metrics_url + "/healthz") == 200

    nats_server.start()  # same port and store: nats-py reconnects by itself

    async def ready() -> bool:
        return await status(metrics_url + "/readyz") == 200

    await wait_until(ready, 30, "/readyz to recover")

    nc = await nats.connect(nats_server.url)
    try:
        ev = EventBatch(events=[event("z", "queued", "default", "normal", "shell")])
        await nc.jetstream().publish(TOPO.queued_subject, ev.model_dump_json().encode())
    finally:
        await nc.close()

    async def counted() -> bool:
        s = await scrape(metrics_url)
        return value(s, "taskyard_jobs_submitted_total", queue="default", type="shell") == 1

    await wait_until(counted, 20, "the event published after the outage to be counted")
