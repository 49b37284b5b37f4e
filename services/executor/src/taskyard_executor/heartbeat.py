"""Heartbeats into the workers KV bucket (its TTL turns a silent worker into a missing key)."""

import asyncio
import contextlib
import logging
import os
import socket
import time

from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from taskyard_common import __version__
from taskyard_common.schemas import Heartbeat, RunningJob
from taskyard_common.topology import Topology

from .worker import Worker

log = logging.getLogger("taskyard.executor.heartbeat")


class HeartbeatPublisher:
    def __init__(self, worker: Worker, topo: Topology) -> None:
        self.worker, self.topo = worker, topo
        self.started_at = time.time()
        self.kv: KeyValue | None = None

    def snapshot(self) -> Heartbeat:
        w = self.worker
        return Heartbeat(
            id=w.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            queues=list(w.settings.queues),
            slots=w.settings.slots,
            running=[
                RunningJob(id=r.spec.id, type=r.spec.type, queue=r.spec.queue, started_at=r.started)
                for r in w.running.values()
            ],
            done=w.done,
            failed=w.failed,
            state="draining" if w.draining else "running",
            started_at=self.started_at,
            handlers=w.registry.names(),
        )

    async def beat(self) -> None:
        if self.kv is None:
            self.kv = await self.worker.js.key_value(self.topo.workers_bucket)
        await self.kv.put(self.worker.id, self.snapshot().model_dump_json().encode())

    async def run_forever(self) -> None:
        """Beat every interval, and soon after a change (a job started or ended, a drain began).

        A change is published `heartbeat_coalesce_s` after it happens, with every other change
        made by then: a burst of starts is one KV put, not one per job, and what the API shows as
        busy trails the worker by about that window instead of up to a whole interval.
        """
        changed = self.worker.state_changed
        coalesce_s = self.worker.settings.heartbeat_coalesce_s
        while True:
            changed.clear()
            try:
                await self.beat()
            except NatsError as exc:
                log.warning("heartbeat failed (%s); NATS may be reconnecting", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.topo.settings.heartbeat_interval_s):
                    await changed.wait()
                    await asyncio.sleep(coalesce_s)

    async def remove(self) -> None:
        """A clean exit deletes the key at once instead of waiting for the TTL."""
        if self.kv is not None:
            try:
                await self.kv.delete(self.worker.id)
            except NatsError as exc:
                log.warning("could not remove heartbeat key: %s", exc)
