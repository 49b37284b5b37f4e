"""Retry policy (taskyard_executor.retry_policy): backoff ceilings, full-jitter bounds, the cap,
permanent versus retryable errors and max_attempts → dead, with exact values."""

import random

import pytest

from taskyard_common.schemas import Backoff, JobSpec
from taskyard_executor.errors import (
    HTTPClientError,
    HTTPStatusError,
    InvalidPayload,
    JobError,
    PermanentError,
    ProcessFailed,
    RetryLater,
    as_job_error,
)
from taskyard_executor.retry_policy import (
    AfterFailure,
    after_failure,
    backoff_ceiling,
    backoff_delay,
    lost_on_last_attempt,
)


def highest(lo: float, hi: float) -> float:
    """A `uniform` that always draws the top of the range: the delay equals the ceiling."""
    return hi


def spec(max_attempts: int = 3, **backoff) -> JobSpec:
    return JobSpec(id="j1", type="noop", max_attempts=max_attempts, backoff=Backoff(**backoff))


# Backoff


def test_default_backoff_doubles_from_one_second_up_to_five_minutes():
    b = Backoff()
    assert [backoff_ceiling(b, n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff_ceiling(b, 50) == 300  # stays at the cap (no overflow into inf or an error)


def test_custom_base_factor_and_cap():
    b = Backoff(base_s=0.5, factor=3, max_s=10)
    assert [backoff_ceiling(b, n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]


def test_factor_one_is_a_constant_delay():
    assert {backoff_ceiling(Backoff(base_s=7, factor=1), n) for n in range(1, 20)} == {7}


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempt_below_one_uses_the_base(attempt):
    assert backoff_ceiling(Backoff(base_s=2), attempt) == 2


def test_full_jitter_draws_from_zero_to_the_ceiling():
    asked = []

    def record(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return lo

    assert backoff_delay(Backoff(), 4, record) == 0
    assert backoff_delay(Backoff(), 4, highest) == 8
    assert asked == [(0, 8)]


def test_real_jitter_stays_within_bounds_and_spreads():
    rng = random.Random(1234)
    delays = [backoff_delay(Backoff(base_s=1, factor=2, max_s=30), 6, rng.uniform) for _ in range(2000)]
    assert all(0 <= d <= 30 for d in delays)  # ceiling min(30, 1·2⁵ = 32) = 30
    assert min(delays) < 1 and max(delays) > 29  # spread over the whole range, not a fixed value


# After a failure


def test_retryable_error_is_retried_with_backoff_until_max_attempts():
    s = spec(max_attempts=3, base_s=5, factor=2)
    err = ProcessFailed("exit 1", exit_code=1)
    assert after_failure(err, 1, s, highest) == AfterFailure("retrying", 5)
    assert after_failure(err, 2, s, highest) == AfterFailure("retrying", 10)
    assert after_failure(err, 3, s, highest) == AfterFailure("dead")  # the last attempt failed


def test_one_attempt_only_goes_straight_to_dead():
    assert after_failure(JobError("boom"), 1, spec(max_attempts=1), highest) == AfterFailure("dead")


@pytest.mark.parametrize(
    "err",
    [
        PermanentError("no"),
        InvalidPayload("payload.command: Field required"),
        HTTPClientError("404", status=404),
        JobError("handler said no", retryable=False),
    ],
)
def test_permanent_errors_fail_at_once_even_with_attempts_left(err):
    assert after_failure(err, 1, spec(max_attempts=5), highest) == AfterFailure("failed")


def test_permanent_error_on_the_last_attempt_is_failed_not_dead():
    assert after_failure(PermanentError("no"), 3, spec(max_attempts=3), highest) == AfterFailure("failed")


def test_retry_later_overrides_the_backoff():
    s = spec(max_attempts=4, base_s=1)
    assert after_failure(RetryLater("429", defer_s=42), 2, s, highest) == AfterFailure("retrying", 42.0)
    assert after_failure(RetryLater("now", defer_s=0), 1, s, highest) == AfterFailure("retrying", 0.0)
    # It does not buy attempts beyond max_attempts.
    assert after_failure(RetryLater("429", defer_s=42), 4, s, highest) == AfterFailure("dead")


def test_http_5xx_and_unexpected_crashes_are_retryable():
    s = spec(max_attempts=2, base_s=3)
    assert after_failure(HTTPStatusError("503", status=503), 1, s, highest) == AfterFailure("retrying", 3)
    crash = as_job_error(ZeroDivisionError("division by zero"))
    assert after_failure(crash, 1, s, highest) == AfterFailure("retrying", 3)
    assert after_failure(crash, 2, s, highest) == AfterFailure("dead")


def test_a_delivery_past_max_attempts_means_the_last_worker_was_lost():
    assert [lost_on_last_attempt(d, 3) for d in (1, 2, 3, 4, 5)] == [False, False, False, True, True]
