"""The metrics service looks each label child up once (label_children.Children)."""

from taskyard_common.schemas import JobEvent
from taskyard_metrics.events import record_event
from taskyard_metrics.registry import Metrics


def finished(queue: str) -> JobEvent:
    return JobEvent(job_id="j", type="succeeded", queue=queue, priority="normal", job_type="noop")


def test_a_child_is_the_metrics_own_and_counts_land_in_its_series() -> None:
    one, two = Metrics(), Metrics()
    assert one.child(one.finished, "q", "noop", "succeeded") is one.finished.labels("q", "noop", "succeeded")
    for _ in range(3):
        record_event(one, finished("q"))
    record_event(one, finished("other"))
    record_event(two, finished("q"))
    labels = {"queue": "q", "type": "noop", "status": "succeeded"}
    assert one.registry.get_sample_value("taskyard_jobs_finished_total", labels) == 3
    assert one.registry.get_sample_value("taskyard_jobs_finished_total", {**labels, "queue": "other"}) == 1
    # Another Metrics (another registry) has children of its own.
    assert two.registry.get_sample_value("taskyard_jobs_finished_total", labels) == 1
