"""Worker health from heartbeats in the workers KV bucket.

healthy: last heartbeat ≤ 2 intervals old; stale: older (the key lives until the bucket TTL,
3 intervals); gone: the key expired or was deleted — kept listed for `gone_keep_s` with its last
state; draining: the worker said so; stuck: it heartbeats but holds a job far longer than jobs of
that type usually take.
"""

import asyncio
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from taskyard_common.heartbeats import HeartbeatReader
from taskyard_common.schemas import Heartbeat
from taskyard_common.topology import Topology


@dataclass
class WorkerView:
    heartbeat: Heartbeat
    state: str
    age_s: float
    stuck_jobs: list[str]

    def to_dict(self) -> dict:
        hb = self.heartbeat
        return {
            "id": hb.id,
            "host": hb.host,
            "pid": hb.pid,
            "version": hb.version,
            "queues": hb.queues,
            "handlers": hb.handlers,
            "slots": hb.slots,
            "slots_used": len(hb.running) if self.state != "gone" else 0,
            "running": [r.model_dump() for r in hb.running] if self.state != "gone" else [],
            "jobs_done": hb.done,
            "jobs_failed": hb.failed,
            "state": self.state,
            "last_heartbeat_age_s": round(self.age_s, 3),
            "started_at": hb.started_at,
            "stuck_jobs": self.stuck_jobs,
        }

    @property
    def live(self) -> bool:
        return self.state in ("healthy", "stuck", "stale")


# How old a workers view may be when it says that nobody serves a queue.
NONE_RECHECK_S = 0.1


class WorkerRegistry:
    def __init__(
        self,
        js: JetStreamContext,
        topo: Topology,
        ttl_s: float = 1.0,
        gone_keep_s: float = 3600,
        stuck_min_s: float = 300,
    ) -> None:
        self.reader, self.ttl_s = HeartbeatReader(js, topo), ttl_s
        self.gone_keep_s, self.stuck_min_s = gone_keep_s, stuck_min_s
        self.interval_s = topo.settings.heartbeat_interval_s
        self._seen: dict[str, Heartbeat] = {}
        self._live: set[str] = set()
        self._at = 0.0
        self._lock = asyncio.Lock()
        self.typical_duration_s: dict[str, float] = {}

    async def _refresh(self) -> None:
        beats = await self.reader.read()
        self._seen.update((hb.id, hb) for hb in beats)
        self._live, self._at = {hb.id for hb in beats}, time.monotonic()

    async def workers(self, max_age_s: float | None = None) -> list[WorkerView]:
        max_age = self.ttl_s if max_age_s is None else max_age_s
        if time.monotonic() - self._at > max_age:
            async with self._lock:
                if time.monotonic() - self._at > max_age:
                    await self._refresh()
        now = time.time()
        views = []
        for wid, hb in list(self._seen.items()):
            age = now - hb.at
            if wid not in self._live:
                if age > self.gone_keep_s:
                    del self._seen[wid]
                    continue
                views.append(WorkerView(hb, "gone", age, []))
                continue
            stuck = [
                r.id
                for r in hb.running
                if now - r.started_at > max(self.stuck_min_s, 10 * self.typical_duration_s.get(r.type, 0))
            ]
            if age > 2 * self.interval_s:
                state = "stale"
            elif hb.state == "draining":
                state = "draining"
            else:
                state = "stuck" if stuck else "healthy"
            views.append(WorkerView(hb, state, age, stuck))
        return sorted(views, key=lambda v: (v.state == "gone", v.heartbeat.id))

    async def serving(self, queue: str) -> list[WorkerView]:
        found = [w for w in await self.workers() if queue in w.heartbeat.queues]
        if not any(w.live for w in found) and time.monotonic() - self._at > NONE_RECHECK_S:
            # "No live worker" is the answer people act on (go and start one): give it from a view
            # at most NONE_RECHECK_S old, not ttl_s, so a worker that just came up is seen.
            found = [w for w in await self.workers(NONE_RECHECK_S) if queue in w.heartbeat.queues]
        return found
