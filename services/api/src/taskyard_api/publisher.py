"""Publishing to JOBS and EVENTS: the only place the API writes to NATS."""

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from taskyard_common.background import Background
from taskyard_common.nats_util import AckedPublish, wait_acks
from taskyard_common.schemas import Backoff, EventBatch, JobEvent, JobSpec
from taskyard_common.topology import Topology, ensure_queue

from .http_metrics import JOBS_PUBLISH_DUPLICATES, JOBS_PUBLISHED
from .lifecycle import JobRecord

log = logging.getLogger("taskyard.api.publisher")
# Events in one announcement message (a 10,000-job burst is 20 messages of ~60 KB).
ANNOUNCE_MAX = 500


def spec_of(job: JobRecord) -> JobSpec:
    return JobSpec(
        id=job.id,
        type=job.type,
        payload=job.payload,
        queue=job.queue,
        priority=job.priority,  # type: ignore[arg-type]  # stored from a validated Priority
        timeout_s=job.timeout_s,
        max_attempts=job.max_attempts,
        backoff=Backoff.model_validate(job.backoff),
        labels=job.labels,
        submitted_at=job.created_at,
        generation=job.generation,
        resume=job.resume,
        **(job.artifacts or {}),
    )


class Publisher:
    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        topo: Topology,
        publish_async: AckedPublish,
        on_new_queue: Callable[[], None] = lambda: None,
    ) -> None:
        # `publish_async`: the process's one AckedPublish (its inbox answers every publish's ack).
        self.nc, self.js, self.topo = nc, js, topo
        self.publish_async = publish_async
        self._queues: set[str] = set()
        # What its callers did not wait for (announcements' acks, publishes of admitted jobs),
        # finished when the api stops.
        self.background = Background()
        # Called once a queue's consumers exist: the api's cached listing of them (QueueState)
        # reads again, so GET /queues lists a queue as soon as its first job is stored.
        self.on_new_queue = on_new_queue

    async def ensure_queue(self, queue: str) -> None:
        """Its consumers exist (created on a queue's first job). Raises QueueLimitReached."""
        if queue not in self._queues:
            await ensure_queue(self.js, self.topo, queue)
            self._queues.add(queue)
            self.on_new_queue()

    async def publish_jobs(self, jobs: list[JobRecord]) -> dict[str, int]:
        """Publish specs with Nats-Msg-Id (dedupe); returns job id → stream seq of the jobs acked.
        Jobs whose publish failed are left out: they stay due in the outbox. Their `queued` is not
        an event per job: the API writes the timeline row itself when it records the sequence,
        and announces the burst in one message (`announce`)."""
        for queue in {j.queue for j in jobs}:
            await self.ensure_queue(queue)
        futures = []
        for job in jobs:
            spec = spec_of(job)
            subject = self.topo.job_subject(job.queue, job.priority)
            data = spec.model_dump_json().encode()
            headers = {"Nats-Msg-Id": spec.msg_id}
            if job.traceparent:
                headers["traceparent"] = job.traceparent
            futures.append(await self.publish_async(subject, data, headers=headers))
        # A lost server owes acks it will never send: the outbox publishes those jobs again
        # (JOBS drops a copy it already has by Nats-Msg-Id), so the wait ends at the loss.
        acks = await wait_acks(futures, timeout=10, nc=self.nc)
        seqs: dict[str, int] = {}
        duplicates = 0
        for job, ack in zip(jobs, acks, strict=True):
            if isinstance(ack, BaseException):
                log.warning("publish of job %s failed (outbox will retry): %s", job.id, ack)
            else:
                seqs[job.id] = cast(PubAck, ack).seq
                duplicates += bool(cast(PubAck, ack).duplicate)
        JOBS_PUBLISHED.inc(len(seqs) - duplicates)
        JOBS_PUBLISH_DUPLICATES.inc(duplicates)
        return seqs

    async def announce(self, events: list[JobEvent]) -> None:
        """The `queued` events of one publish burst, ANNOUNCE_MAX to a message, for the metrics
        service (the timeline rows are already written). Sent, not waited for: their acks are
        awaited (and a failure logged) by a task of their own, so a submit does not wait for a
        JetStream round trip that only the metrics service reads (~0.3 ms of a lone POST /jobs)."""
        futures = []
        for start in range(0, len(events), ANNOUNCE_MAX):
            body = EventBatch(events=events[start : start + ANNOUNCE_MAX]).model_dump_json().encode()
            futures.append(await self.publish_async(self.topo.queued_subject, body))
        self.background.spawn(self.events_stored(futures))

    async def wake(self, jobs: list[JobRecord]) -> None:
        """Tell idle executors that these jobs are stored: one wake-up per queue, naming the
        priorities (executors then ask only those consumers). Core NATS, not waited for: an
        executor that misses it polls anyway."""
        priorities: dict[str, set[str]] = {}
        for job in jobs:
            priorities.setdefault(job.queue, set()).add(job.priority)
        for queue, named in priorities.items():
            await self.nc.publish(self.topo.wake_subject(queue), ",".join(sorted(named)).encode())

    async def _send_event(self, event: JobEvent, msg_id: str | None = None) -> asyncio.Future:
        """Publish an event without waiting; pass the future to `events_stored`."""
        return await self.publish_async(
            self.topo.event_subject(event.job_id),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id} if msg_id else None,
        )

    async def events_stored(self, futures: list[asyncio.Future]) -> None:
        for result in await wait_acks(futures, timeout=10, nc=self.nc):
            if isinstance(result, BaseException):
                # Events are the timeline; the row's own status is already written by the API.
                log.warning("event publish failed: %s", result)

    async def publish_events(self, events: list[JobEvent]) -> None:
        await self.events_stored([await self._send_event(e) for e in events])

    async def publish_events_once(self, events: list[tuple[JobEvent, str]]) -> list[PubAck | None]:
        """Events with their own Nats-Msg-Id (JetStream drops a copy it still knows within its
        duplicate window); each one's ack (`duplicate` set for a dropped copy), None if not stored."""
        futures = [await self._send_event(event, msg_id) for event, msg_id in events]
        acks: list[PubAck | None] = []
        for result in await wait_acks(futures, timeout=10, nc=self.nc):
            if isinstance(result, BaseException):
                log.warning("event publish failed: %s", result)
                acks.append(None)
            else:
                acks.append(cast(PubAck, result))
        return acks

    async def delete_queued(self, seq: int) -> bool:
        """Remove a not-yet-finished job message from JOBS; False when it is already gone."""
        try:
            return await self.js.delete_msg(self.topo.jobs_stream, seq)
        except NatsError:
            return False

    async def broadcast_cancel(self, job_id: str) -> None:
        await self.nc.publish(self.topo.cancel_subject(job_id), b"")
        await self.nc.flush(timeout=5)
