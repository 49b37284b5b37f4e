"""In-process rate limits (per API replica): job submissions per key, failed key attempts per client."""

import math
import time
from collections import OrderedDict
from collections.abc import Iterable

from fastapi import HTTPException


class TokenBucket:
    """`rate` tokens per second, up to `burst`; one bucket per key, created on first use."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; returns 0 if allowed, else the seconds to wait before retrying."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if cost > self.burst:
            return math.inf
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        self._buckets[key] = (tokens - cost, now)
        return 0.0


def too_many(wait_s: float, what: str) -> HTTPException:
    retry = max(1, math.ceil(wait_s)) if math.isfinite(wait_s) else 60
    return HTTPException(429, f"rate limit: {what}; retry in {retry}s", headers={"Retry-After": str(retry)})


class FailureLimiter:
    """Failed key attempts, counted per bucket (a client address, a key id); a full bucket gets 429.

    Only failures are counted and only failures are refused: the caller checks the key first and
    admits a valid one whatever the buckets hold, so nobody's bad keys ever lock a valid key out.
    A bucket is a fixed window (its first failure + `window_s`) with a count, and at most
    `max_buckets` are kept, the least recently failing dropped first: an attacker sending random key
    ids cannot grow memory without bound, and cannot push out its own address's bucket with them
    (that bucket fails on every attempt, so it is always the most recent).
    """

    def __init__(self, limit: int, window_s: float, max_buckets: int = 50_000) -> None:
        self.limit, self.window_s, self.max_buckets = limit, window_s, max_buckets
        self._buckets: OrderedDict[str, tuple[float, int]] = OrderedDict()  # name -> (window end, count)

    def failed(self, buckets: Iterable[str]) -> float:
        """Count one failure in each bucket; the seconds to wait if one is now past the limit, else 0."""
        now = time.monotonic()
        wait = 0.0
        for name in buckets:
            ends, count = self._buckets.pop(name, (0.0, 0))
            if ends <= now:
                ends, count = now + self.window_s, 0
            count += 1
            self._buckets[name] = (ends, count)  # re-inserted: now the most recent
            if count > self.limit:
                wait = max(wait, ends - now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
