"""Publishing to JOBS and EVENTS: the only place the API writes to NATS."""

import asyncio
import logging

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from taskyard_common.nats_util import wait_acks
from taskyard_common.schemas import JobEvent, JobSpec
from taskyard_common.topology import Topology, ensure_queue

from .models import Job

log = logging.getLogger("taskyard.api.publisher")


def spec_of(job: Job) -> JobSpec:
    return JobSpec(
        id=job.id,
        type=job.type,
        payload=job.payload,
        queue=job.queue,
        priority=job.priority,
        timeout_s=job.timeout_s,
        max_attempts=job.max_attempts,
        backoff=job.backoff,
        labels=job.labels,
        submitted_at=job.created_at,
        generation=job.generation,
        resume=job.resume,
    )


class Publisher:
    def __init__(self, nc: NatsClient, js: JetStreamContext, topo: Topology) -> None:
        self.nc, self.js, self.topo = nc, js, topo
        self._queues: set[str] = set()

    async def _ensure_queue(self, queue: str) -> None:
        if queue not in self._queues:
            await ensure_queue(self.js, self.topo, queue)
            self._queues.add(queue)

    async def publish_jobs(self, jobs: list[Job]) -> dict[str, int]:
        """Publish specs with Nats-Msg-Id = job id (dedupe); returns job id → stream seq of those acked.

        Jobs whose publish failed are left out: they stay `pending` for the outbox reconciler.
        """
        for queue in {j.queue for j in jobs}:
            await self._ensure_queue(queue)
        futures = []
        for job in jobs:
            spec = spec_of(job)
            subject = self.topo.job_subject(job.queue, job.priority)
            data = spec.model_dump_json().encode()
            headers = {"Nats-Msg-Id": spec.msg_id}
            if job.traceparent:
                headers["traceparent"] = job.traceparent
            futures.append(await self.js.publish_async(subject, data, headers=headers))
        acks = await wait_acks(futures, timeout=10)
        seqs: dict[str, int] = {}
        for job, ack in zip(jobs, acks, strict=True):
            if isinstance(ack, BaseException):
                log.warning("publish of job %s failed (outbox will retry): %s", job.id, ack)
            else:
                seqs[job.id] = ack.seq
        return seqs

    async def wake(self, jobs: list[Job]) -> None:
        """Tell idle executors that these jobs are stored: one wake-up per queue, naming the
        priorities (executors then ask only those consumers). Core NATS, not waited for: an
        executor that misses it polls anyway."""
        priorities: dict[str, set[str]] = {}
        for job in jobs:
            priorities.setdefault(job.queue, set()).add(job.priority)
        for queue, named in priorities.items():
            await self.nc.publish(self.topo.wake_subject(queue), ",".join(sorted(named)).encode())

    async def send_events(self, events: list[JobEvent]) -> list[asyncio.Future]:
        """Publish events without waiting; pass the futures to `events_stored`."""
        return [
            await self.js.publish_async(self.topo.event_subject(e.job_id), e.model_dump_json().encode())
            for e in events
        ]

    async def events_stored(self, futures: list[asyncio.Future]) -> None:
        for result in await wait_acks(futures, timeout=10):
            if isinstance(result, BaseException):
                # Events are the timeline; the row's own status is already written by the API.
                log.warning("event publish failed: %s", result)

    async def publish_events(self, events: list[JobEvent]) -> None:
        await self.events_stored(await self.send_events(events))

    async def delete_queued(self, seq: int) -> bool:
        """Remove a not-yet-finished job message from JOBS; False when it is already gone."""
        try:
            return await self.js.delete_msg(self.topo.jobs_stream, seq)
        except NatsError:
            return False

    async def broadcast_cancel(self, job_id: str) -> None:
        await self.nc.publish(self.topo.cancel_subject(job_id), b"")
        await self.nc.flush(timeout=5)
