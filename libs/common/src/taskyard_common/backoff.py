"""Retry delays after a failed attempt: shared by the executor and the API's REST-worker leases."""

import random
from collections.abc import Callable

from .schemas import Backoff

Uniform = Callable[[float, float], float]


def backoff_ceiling(backoff: Backoff, attempt: int) -> float:
    """Longest delay after failed attempt `attempt` (1-based): base_s · factor^(attempt−1), ≤ max_s."""
    return min(backoff.max_s, backoff.base_s * backoff.factor ** max(0, attempt - 1))


def backoff_delay(backoff: Backoff, attempt: int, uniform: Uniform = random.uniform) -> float:
    """Full jitter: uniform in [0, ceiling], so workers failing together do not retry together."""
    return uniform(0, backoff_ceiling(backoff, attempt))
