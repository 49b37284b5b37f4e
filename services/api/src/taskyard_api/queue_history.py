"""Each queue's depth by priority over the last 24 h, one point a minute, kept in memory.

Filled by the api's queue sampler (every SAMPLE_INTERVAL_S; the last sample of a minute is its
point). Per api process and lost on restart: a depth history needs no database, and the queue
page says since when it has points.
"""

import time
from collections import deque
from collections.abc import Mapping

from taskyard_common.topology import ConsumerSnap

KEEP_MINUTES = 1440


class DepthHistory:
    def __init__(self) -> None:
        # queue → [(minute, {priority: depth})], oldest first.
        self._points: dict[str, deque[tuple[int, dict[str, int]]]] = {}

    def record(self, snaps: Mapping[tuple[str, str], ConsumerSnap], now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        current: dict[str, dict[str, int]] = {}
        for (queue, priority), snap in snaps.items():
            current.setdefault(queue, {})[priority] = snap.num_pending
        for queue, depths in current.items():
            points = self._points.setdefault(queue, deque(maxlen=KEEP_MINUTES))
            if points and points[-1][0] == minute:
                points[-1] = (minute, depths)
            else:
                points.append((minute, depths))

    def of(self, queue: str, minutes: int = KEEP_MINUTES) -> list[tuple[int, dict[str, int]]]:
        """(minute, {priority: depth}) points of the last `minutes`, oldest first."""
        since = int(time.time() // 60) - minutes
        return [p for p in self._points.get(queue, ()) if p[0] > since]
