"""A job's log lines and events, published without waiting per line, flushed before the job ends."""

import asyncio

from nats.js import JetStreamContext

from taskyard_common.nats_util import wait_acks
from taskyard_common.schemas import JobEvent, LogLine
from taskyard_common.topology import Topology

MAX_UNACKED = 1000
# A publish whose ack has not come by then is treated as lost (NATS away or restarting).
FLUSH_TIMEOUT_S = 30


class Emitter:
    """Publishes to LOGS and EVENTS with publish_async; `flush(job_id)` waits for that job's acks.

    Waiting for acks before the final event and the JOBS ack means a job is never reported
    finished while some of its lines could still be lost. Acks are tracked per job: with one
    shared list, a job's flush could take another job's pending publishes, and that other job
    would then find nothing to wait for and ack its delivery before its own `started` was stored.
    """

    def __init__(self, js: JetStreamContext, topo: Topology) -> None:
        self.js, self.topo = js, topo
        self._pending: dict[str, list[asyncio.Future]] = {}

    async def _publish(self, job_id: str, subject: str, data: bytes) -> None:
        pending = self._pending.setdefault(job_id, [])
        pending.append(await self.js.publish_async(subject, data))
        if len(pending) >= MAX_UNACKED:
            await self.flush(job_id)

    async def log(self, job_id: str, line: LogLine) -> None:
        await self._publish(job_id, self.topo.log_subject(job_id), line.model_dump_json().encode())

    async def event(self, event: JobEvent) -> None:
        await self._publish(
            event.job_id, self.topo.event_subject(event.job_id), event.model_dump_json().encode()
        )

    async def flush(self, job_id: str | None = None) -> None:
        """Wait for `job_id`'s publishes (every job's when None); raise the first failure."""
        jobs = list(self._pending) if job_id is None else [job_id]
        pending = [future for job in jobs for future in self._pending.pop(job, [])]
        for ack in await wait_acks(pending, timeout=FLUSH_TIMEOUT_S):
            if isinstance(ack, BaseException):
                # The caller has not acked its job yet: failing here leaves it to be redelivered.
                raise ack

    def forget(self, job_id: str) -> None:
        """Stop tracking a job that ended without a flush (NATS error, handed back)."""
        self._pending.pop(job_id, None)
