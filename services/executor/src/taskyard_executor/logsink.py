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
    """Publishes to LOGS and EVENTS with publish_async; `flush()` waits for every ack.

    Waiting for acks before the final event and the JOBS ack means a job is never reported
    finished while some of its lines could still be lost.
    """

    def __init__(self, js: JetStreamContext, topo: Topology) -> None:
        self.js, self.topo = js, topo
        self._pending: list[asyncio.Future] = []

    async def _publish(self, subject: str, data: bytes) -> None:
        self._pending.append(await self.js.publish_async(subject, data))
        if len(self._pending) >= MAX_UNACKED:
            await self.flush()

    async def log(self, job_id: str, line: LogLine) -> None:
        await self._publish(self.topo.log_subject(job_id), line.model_dump_json().encode())

    async def event(self, event: JobEvent) -> None:
        await self._publish(self.topo.event_subject(event.job_id), event.model_dump_json().encode())

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for ack in await wait_acks(pending, timeout=FLUSH_TIMEOUT_S):
            if isinstance(ack, BaseException):
                # The caller has not acked its job yet: failing here leaves it to be redelivered.
                raise ack
