"""In-process rate limits (per API replica): job submissions per key, failed key attempts per client."""

import math
import time

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
    """After `limit` unknown-key attempts from one client within `window_s`, refuse it for the window."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, list[float]] = {}

    def check(self, client: str) -> None:
        recent = self._recent(client)
        if len(recent) >= self.limit:
            raise too_many(
                recent[0] + self.window_s - time.monotonic(), "too many invalid API keys from this client"
            )

    def failed(self, client: str) -> None:
        recent = self._recent(client)
        recent.append(time.monotonic())
        if len(self._failures) > 100_000:
            self._failures.clear()
        self._failures[client] = recent

    def _recent(self, client: str) -> list[float]:
        cutoff = time.monotonic() - self.window_s
        return [t for t in self._failures.get(client, []) if t > cutoff]
