"""Worker health from heartbeats in the workers KV bucket.

healthy: last heartbeat ≤ 2 intervals old; stale: older (the key lives until the bucket TTL,
3 intervals); gone: the key expired or was deleted — kept listed for `gone_keep_s` with its last
state; draining: the worker said so; stuck: it heartbeats but holds a job far longer than jobs of
that type usually take.

Fresh by a KV watch: every heartbeat a worker puts (it puts one ~50 ms after a job starts or
ends) is applied as it arrives, so slot use and running jobs are as current as the worker's last
put. The cached listing (`ttl_s`) still decides who is live, as a key that expires leaves nothing
a watch would see; while the watch is down, the listing is read again at most `UNWATCHED_MAX_AGE_S`
after the previous one instead.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

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
            # A REST worker's: the api process that serves it (counts its slots, holds its leases).
            "via": hb.via,
        }

    @property
    def live(self) -> bool:
        return self.state in ("healthy", "stuck", "stale")


log = logging.getLogger("taskyard.api.workers")

# How old a workers view may be when it says that nobody serves a queue.
NONE_RECHECK_S = 0.1
# How old the listing may be while the watch is down (slot use must stay current: docs/api.md).
UNWATCHED_MAX_AGE_S = 0.05


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
        self.watching = False
        # worker id → (when, put or not) of what the watch saw since the listing being read began.
        self._watched: dict[str, tuple[float, bool]] = {}

    def _keep_newer(self, hb: Heartbeat) -> None:
        # The listing and the watch race: a listing begun before a put must not undo it.
        old = self._seen.get(hb.id)
        if old is None or hb.at >= old.at:
            self._seen[hb.id] = hb

    async def _refresh(self) -> None:
        began = time.monotonic()
        beats = await self.reader.read()
        for hb in beats:
            self._keep_newer(hb)
        live = {hb.id for hb in beats}
        for wid, (at, put) in self._watched.items():
            if at >= began:  # newer than what the listing read
                (live.add if put else live.discard)(wid)
        self._watched = {wid: seen for wid, seen in self._watched.items() if seen[0] >= began}
        self._live, self._at = live, time.monotonic()

    def _apply(self, entry: KeyValue.Entry) -> None:
        """One watched heartbeat put, or a key deleted by a worker's clean exit."""
        now = time.monotonic()
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._live.discard(entry.key)
            self._watched[entry.key] = (now, False)
            return
        try:
            hb = Heartbeat.model_validate_json(entry.value)
        except ValidationError as err:
            log.warning("workers bucket key %s is not a Heartbeat: %s", entry.key, err.errors()[:1])
            return
        self._keep_newer(hb)
        self._live.add(hb.id)
        self._watched[hb.id] = (now, True)

    async def watch(self) -> None:
        """Apply heartbeats as they are put. Supervised: an error ends it and the supervisor starts
        it again; meanwhile `workers()` re-reads the listing at most UNWATCHED_MAX_AGE_S apart."""
        kv = await self.reader.js.key_value(self.reader.bucket)
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the current values are in: from now on, every put
                    self.watching = True
                else:
                    self._apply(entry)
        finally:
            self.watching = False
            # Suppressed here, so an error while stopping never hides a cancellation.
            with contextlib.suppress(NatsError):
                await watcher.stop()
        raise ConnectionError("the workers bucket's watch ended")

    async def workers(self, max_age_s: float | None = None) -> list[WorkerView]:
        max_age = self.ttl_s if max_age_s is None else max_age_s
        if not self.watching:
            max_age = min(max_age, UNWATCHED_MAX_AGE_S)
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
