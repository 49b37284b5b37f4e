"""After a failed attempt: retry after a delay, dead (out of attempts) or failed (permanent).

The worker acts on the decision (nak with the delay, publish to DEAD, term); the decision itself
needs only the error, the attempt number and the job's spec, so it is decided here.
"""

import random
from dataclasses import dataclass
from typing import Literal

from taskyard_common.backoff import Uniform, backoff_ceiling, backoff_delay
from taskyard_common.schemas import JobSpec

from .errors import JobError

__all__ = [
    "AfterFailure",
    "Uniform",
    "after_failure",
    "backoff_ceiling",
    "backoff_delay",
    "lost_on_last_attempt",
]


@dataclass(frozen=True)
class AfterFailure:
    outcome: Literal["retrying", "dead", "failed"]
    delay_s: float | None = None  # only for "retrying"


def after_failure(
    err: JobError, attempt: int, spec: JobSpec, uniform: Uniform = random.uniform
) -> AfterFailure:
    """A retryable error is retried until `max_attempts` attempts were made, then the job is dead;
    a permanent one fails at once. RetryLater's `defer_s` replaces the backoff for that attempt."""
    if not err.retryable:
        return AfterFailure("failed")
    if attempt >= spec.max_attempts:
        return AfterFailure("dead")
    # Any error carrying `defer_s` (RetryLater, or a handler's own JobError subclass) sets the delay.
    if (defer_s := getattr(err, "defer_s", None)) is not None:
        return AfterFailure("retrying", defer_s)
    return AfterFailure("retrying", backoff_delay(spec.backoff, attempt, uniform))


def lost_on_last_attempt(delivery: int, max_attempts: int) -> bool:
    """A delivery past `max_attempts`: the worker of the last attempt died without an outcome."""
    return delivery > max_attempts
