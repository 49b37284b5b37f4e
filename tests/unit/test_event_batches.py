"""Several jobs' lifecycle events in one EVENTS message (an executor's batch), and a second run.

The projector gives each batched event its own place (message sequence × PER_MESSAGE + index), so
replays insert nothing twice and every job moves in the order its events happened; a worker's run
of a generation that had already ended is recorded, not applied.
"""

from taskyard_api.lifecycle import JobRecord
from taskyard_api.projector import PER_MESSAGE, apply_events, keyed
from taskyard_common.coalesce import carry
from taskyard_common.schemas import EventBatch, JobEvent
from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology
from taskyard_metrics.events import record_message
from taskyard_metrics.registry import Metrics

from .records import T0, event, record

TOPO = Topology(NatsSettings(prefix="taskyard"))


def job(job_id: str, **fields) -> JobRecord:
    return record(job_id, **fields)


def quick(job_id: str, at: float, attempt: int = 1, worker: str = "w1") -> JobEvent:
    started = event("started", at, job_id=job_id, attempt=attempt, worker=worker, wait_s=0.001)
    return carry(
        event("succeeded", at + 0.01, job_id=job_id, attempt=attempt, worker=worker, duration_s=0.01), started
    )


def test_an_executor_batch_subject_is_one_per_executor_and_never_a_job_id():
    subject = TOPO.batch_subject("host.example-12.ab")
    assert subject == "taskyard.events._w.host_example-12_ab"  # one token: no dots from a hostname
    assert TOPO.is_batch_subject(subject) and TOPO.is_batch_subject(TOPO.queued_subject)
    assert not TOPO.is_batch_subject(TOPO.event_subject("01JABCDEF"))


def test_each_batched_event_has_its_own_place_after_every_single_event_before_it():
    body = EventBatch(events=[quick("A", T0), quick("B", T0), event("progress", T0, job_id="C", pct=50)])
    places = keyed(True, 7, body.model_dump_json().encode())
    assert [(key, e.job_id) for key, e in places] == [
        (7 * PER_MESSAGE, "A"),
        (7 * PER_MESSAGE + 1, "B"),
        (7 * PER_MESSAGE + 2, "C"),
    ]
    single = keyed(False, 8, event("progress", T0, job_id="A").model_dump_json().encode())
    assert single[0][0] == 8 * PER_MESSAGE > places[-1][0]


def test_a_batch_moves_every_job_and_writes_both_rows_of_each_coalesced_one():
    jobs = {j: job(j, status="queued", stream_seq=i + 1) for i, j in enumerate("AB")}
    body = EventBatch(events=[quick("A", T0 + 1), quick("B", T0 + 1, worker="w2")]).model_dump_json().encode()
    rows, _, _ = apply_events(keyed(True, 3, body), jobs)
    assert [(r["job_id"], r["type"], r["stream_seq"]) for r in rows] == [
        ("A", "started", -3 * PER_MESSAGE),
        ("A", "succeeded", 3 * PER_MESSAGE),
        ("B", "started", -(3 * PER_MESSAGE + 1)),
        ("B", "succeeded", 3 * PER_MESSAGE + 1),
    ]
    assert jobs["A"].status == jobs["B"].status == "succeeded"
    assert jobs["B"].worker_id == "w2" and jobs["A"].last_event_seq == 3 * PER_MESSAGE

    # A replay of the same message moves nothing (the rows are keyed, inserted once by the caller).
    again = dict(jobs)
    apply_events(keyed(True, 3, body), again)
    assert again == jobs


def test_a_run_after_the_generation_ended_is_recorded_as_a_duplicate_and_changes_nothing():
    done = job(
        "A", status="succeeded", attempt=1, worker_id="w1", result={"ok": 1}, last_event_seq=5 * PER_MESSAGE
    )
    jobs = {"A": done}
    # The worker that ran attempt 1 died between storing its outcome and acking the delivery:
    # the next worker ran it again as attempt 2.
    rows, _, _ = apply_events([(9 * PER_MESSAGE, quick("A", T0 + 40, attempt=2, worker="w2"))], jobs)
    assert [(r["type"], r["data"]["event"], r["attempt"]) for r in rows] == [
        ("duplicate_run", "started", 2),
        ("duplicate_run", "succeeded", 2),
    ]
    assert jobs["A"] == done


def test_an_earlier_attempts_report_stored_after_a_later_attempt_ended_the_job_is_a_duplicate():
    # Attempt 1 ran at T0, but its executor's batch reached EVENTS only after a leader election;
    # meanwhile its delivery came back (ack_wait) and attempt 2 on w2 ended the job.
    done = job(
        "A",
        status="succeeded",
        attempt=2,
        worker_id="w2",
        finished_at=T0 + 5.3,
        last_event_seq=5 * PER_MESSAGE,
    )
    jobs = {"A": done}
    rows, _, _ = apply_events([(9 * PER_MESSAGE, quick("A", T0, attempt=1, worker="w1"))], jobs)
    assert [(r["type"], r["data"]["event"], r["attempt"]) for r in rows] == [
        ("duplicate_run", "started", 1),
        ("duplicate_run", "succeeded", 1),
    ]
    assert jobs["A"] == done


def test_a_start_projected_after_its_attempts_progress_leaves_the_job_running():
    # Two api processes project at once: one committed a REST worker's progress (seq 6) before
    # the other projected the attempt's `started` (seq 5), which is then older than the row.
    queued = job("A", status="queued", attempt=0, last_event_seq=0)
    jobs = {"A": queued}
    progress = event("progress", T0 + 0.1, job_id="A", attempt=1, worker="w1", pct=10.0, message="")
    apply_events([(6 * PER_MESSAGE, progress)], jobs)
    started = event("started", T0, job_id="A", attempt=1, worker="w1")
    apply_events([(5 * PER_MESSAGE, started)], jobs)
    moved = jobs["A"]
    assert (moved.status, moved.attempt, moved.worker_id, moved.progress) == (
        "running",
        1,
        "w1",
        {"pct": 10.0, "message": ""},
    )
    # A late progress of the attempt that already failed moves nothing back to running.
    retrying = job("B", status="retrying", attempt=1, last_event_seq=0)
    jobs = {"B": retrying}
    apply_events(
        [(7 * PER_MESSAGE, event("progress", T0, job_id="B", attempt=1, worker="w1", pct=50.0))], jobs
    )
    assert jobs["B"].status == "retrying"


def test_an_earlier_attempt_projected_after_the_later_one_keeps_its_own_rows_and_moves_nothing():
    # Two api processes project at once: one took attempt 2's batch (started, succeeded at
    # seq 9) and committed before the other projected attempt 1's (started, retrying at seq 5).
    done = job(
        "A", status="succeeded", attempt=2, worker_id="w2", finished_at=T0 + 2, last_event_seq=9 * PER_MESSAGE
    )
    jobs = {"A": done}
    started = event("started", T0, job_id="A", attempt=1, worker="w1")
    retrying = event("retrying", T0 + 0.1, job_id="A", attempt=1, worker="w1", delay_s=0.05)
    rows, _, _ = apply_events([(5 * PER_MESSAGE, started), (6 * PER_MESSAGE, retrying)], jobs)
    assert [(r["type"], r["attempt"], r["stream_seq"]) for r in rows] == [
        ("started", 1, 5 * PER_MESSAGE),
        ("retrying", 1, 6 * PER_MESSAGE),
    ]
    assert jobs["A"] == done


def test_a_late_cancel_report_of_a_cancelled_job_is_no_duplicate_run():
    cancelled = job("A", status="cancelled", attempt=0, last_event_seq=PER_MESSAGE)
    jobs = {"A": cancelled}
    rows, _, _ = apply_events([(2 * PER_MESSAGE, event("started", T0 + 1, job_id="A"))], jobs)
    assert [r["type"] for r in rows] == ["started"]


def test_the_metrics_service_counts_every_event_of_a_batch():
    metrics = Metrics(wait_target_s=30.0)
    body = EventBatch(
        events=[quick("A", T0), quick("B", T0), event("failed", T0, job_id="C", duration_s=0.1)]
    )
    record_message(metrics, body.model_dump_json().encode(), batch=True)
    started = metrics.started.labels("default", "noop")._value.get()
    succeeded = metrics.finished.labels("default", "noop", "succeeded")._value.get()
    failed = metrics.finished.labels("default", "noop", "failed")._value.get()
    assert (started, succeeded, failed) == (2, 2, 1)


def test_a_second_copy_run_after_the_end_is_a_duplicate_and_a_late_report_of_the_same_run_is_not():
    done = job(
        "A", status="succeeded", attempt=1, worker_id="w1", finished_at=T0 + 1.01, last_event_seq=PER_MESSAGE
    )
    jobs = {"A": done}
    # JOBS held the job twice (the outbox republished it after the duplicate window): attempt 1 again.
    rows, _, _ = apply_events([(4 * PER_MESSAGE, quick("A", T0 + 200, worker="w2"))], jobs)
    assert [(r["type"], r["data"]["event"]) for r in rows] == [
        ("duplicate_run", "started"),
        ("duplicate_run", "succeeded"),
    ]
    assert jobs["A"] == done
    # The run that ended it, its message delivered to the projector a second time: not a second run.
    rows, _, _ = apply_events([(PER_MESSAGE, quick("A", T0 + 1))], jobs)
    assert [r["type"] for r in rows] == ["started", "succeeded"]
