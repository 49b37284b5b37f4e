"""The queue-wait SLI of the metrics service: started jobs counted against their queue's target."""

import pytest
from pydantic import ValidationError

from taskyard_common.schemas import JobEvent
from taskyard_metrics.events import record_event
from taskyard_metrics.registry import Metrics
from taskyard_metrics.settings import MetricsSettings, parse_wait_targets


def started(queue: str, wait_s: float | None) -> JobEvent:
    data = {} if wait_s is None else {"wait_s": wait_s}
    return JobEvent(job_id="j", type="started", queue=queue, priority="normal", job_type="noop", data=data)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_started_jobs_are_counted_against_their_queues_own_target() -> None:
    metrics = Metrics(wait_target_s=60, wait_targets={"batch": 3600})
    for queue, wait in [("default", 1), ("default", 60), ("default", 61), ("batch", 600), ("batch", 4000)]:
        record_event(metrics, started(queue, wait))
    record_event(metrics, started("default", None))  # a retry's start carries no wait: not counted
    assert sample(metrics, "taskyard_job_wait_target_total", queue="default", outcome="met") == 2
    assert sample(metrics, "taskyard_job_wait_target_total", queue="default", outcome="missed") == 1
    assert sample(metrics, "taskyard_job_wait_target_total", queue="batch", outcome="met") == 1
    assert sample(metrics, "taskyard_job_wait_target_total", queue="batch", outcome="missed") == 1
    assert sample(metrics, "taskyard_job_wait_target_seconds", queue="default") == 60
    assert sample(metrics, "taskyard_job_wait_target_seconds", queue="batch") == 3600


def test_a_queue_exports_both_outcomes_at_zero_from_its_first_event() -> None:
    # rate() over a series born at 1 misses that first miss; both series start at 0 instead.
    metrics = Metrics()
    record_event(metrics, JobEvent(job_id="j", type="queued", queue="q", priority="normal", job_type="noop"))
    assert sample(metrics, "taskyard_job_wait_target_total", queue="q", outcome="met") == 0
    assert sample(metrics, "taskyard_job_wait_target_total", queue="q", outcome="missed") == 0


def test_wait_targets_setting_is_parsed_and_bad_entries_are_named() -> None:
    assert parse_wait_targets(" batch=3600, reports=600.5 ,") == {"batch": 3600.0, "reports": 600.5}
    assert parse_wait_targets("") == {}
    for bad in ("batch", "batch=", "=60", "batch=-1", "batch=soon"):
        with pytest.raises(ValueError, match="QUEUE=SECONDS"):
            parse_wait_targets(bad)
    with pytest.raises(ValidationError, match="wait_targets"):
        MetricsSettings(wait_targets="batch=soon")
