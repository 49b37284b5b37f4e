"""The gate timer's source for rate keys: admits a rate key's next job when its token is due.

Only rate keys with throttled jobs are read (a key's bucket is one row of gate_keys, its next
token time computed from it: key_rules.Bucket). A key whose token is due but whose waiting jobs
also wait for a concurrency key admits nothing: it is not fired again for STALL_S, and the
concurrency key admits those jobs itself (with both keys locked) when a place frees.
"""

import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .admission import rate_keys_due
from .jobs import JobService

STALL_S = 0.5


class RateKeys:
    name = "rate"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], jobs: JobService) -> None:
        self.sessions, self.jobs = sessions, jobs
        self._stalled: dict[str, float] = {}  # key → not fired again before this time

    async def _due(self) -> list[tuple[str, float]]:
        async with self.sessions() as session:
            due = await rate_keys_due(session)
        live = {key for key, _ in due}
        self._stalled = {k: t for k, t in self._stalled.items() if k in live}
        return [(key, max(at, self._stalled.get(key, 0.0))) for key, at in due]

    async def next_due(self) -> float | None:
        return min((at for _, at in await self._due()), default=None)

    async def fire(self, now: float) -> None:
        keys = {key for key, at in await self._due() if at <= now}
        if not keys:
            return
        moved = await self.jobs.admit({("rate", key) for key in keys}, wait=False)
        admitted = {job.rate_key for job in moved if job.status != "throttled" and not job.finished}
        for key in keys - admitted:
            self._stalled[key] = time.time() + STALL_S
        for key in keys & admitted:
            self._stalled.pop(key, None)
