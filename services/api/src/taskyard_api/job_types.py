"""Submit-time check of a job's type and payload, so a job no executor can run is never queued.

Built-in types have their payload validated with the models the executor uses. Any other type must
have been advertised by a worker: heartbeats in the workers KV bucket list their handler names.
"""

import asyncio
import logging
import time

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from taskyard_common.heartbeats import HeartbeatReader
from taskyard_common.payloads import BUILTIN_TYPES, payload_problems
from taskyard_common.topology import Topology

from .schemas import JobFields

log = logging.getLogger("taskyard.api.job_types")

SCAN_INTERVAL_S = 2.0
"""At most one scan of the workers bucket per this many seconds, however many submits arrive."""


class KnownTypes:
    """Which job types may be submitted: the built-ins plus every type a worker has advertised."""

    def __init__(
        self, js: JetStreamContext, topo: Topology, scan_interval_s: float = SCAN_INTERVAL_S
    ) -> None:
        self.reader, self.scan_interval_s = HeartbeatReader(js, topo), scan_interval_s
        # Never shrinks: a type a worker once ran stays submittable while that worker is restarting
        # or scaled to zero; its jobs simply wait in the queue.
        self._seen: set[str] = set()
        self._scanned_at = float("-inf")
        self._scan_failed = False
        self._lock = asyncio.Lock()

    def advertise(self, types: list[str]) -> None:
        """Types a worker of this process declared (a REST worker's claim): known at once."""
        self._seen.update(types)

    async def problems(self, spec: JobFields, prefix: str = "") -> list[str]:
        """What is wrong with ``spec``'s type or payload; ``prefix`` names it (``jobs[3].``)."""
        if spec.type in BUILTIN_TYPES:
            return [prefix + p for p in payload_problems(spec.type, spec.payload)]
        if spec.type in self._seen:
            return []
        await self._refresh()
        if spec.type in self._seen or self._scan_failed:
            # Could not ask NATS: let the job through rather than refuse valid work during an
            # outage; an executor without the handler still fails it permanently.
            return []
        return [
            f"{prefix}type: unknown job type {spec.type!r}: not built-in ({', '.join(BUILTIN_TYPES)}) "
            "and no worker has registered it"
        ]

    async def _refresh(self) -> None:
        """Add the handler names in the workers bucket to ``_seen``, unless scanned just now."""
        async with self._lock:  # concurrent submits share one scan instead of each doing their own
            if time.monotonic() - self._scanned_at < self.scan_interval_s:
                return
            try:
                self._seen.update(await self._advertised())
                self._scan_failed = False
            except (NatsError, TimeoutError) as exc:
                log.warning("cannot read the workers bucket to check job types: %s", exc)
                self._scan_failed = True
            # Failures count too: during an outage each request must not wait for its own timeout.
            self._scanned_at = time.monotonic()

    async def _advertised(self) -> set[str]:
        return {name for hb in await self.reader.read() for name in hb.handlers}
