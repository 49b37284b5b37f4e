"""A quick job's `started` carried in its outcome: the executor's hold, and the readers' split.

The projector and the metrics service must see a coalesced job exactly as one that reported twice.
"""

import pytest

from taskyard_api.lifecycle import JobRecord, Reported, lost_worker, reports, transition
from taskyard_api.projector import apply_events
from taskyard_common.coalesce import carry, parts, started_of
from taskyard_common.schemas import JobEvent
from taskyard_executor.checkpoints import Journal
from taskyard_executor.start_hold import StartHold
from taskyard_metrics.events import record_message
from taskyard_metrics.registry import Metrics

from .records import T0, event, record


def job(**fields) -> JobRecord:
    return record("J1", **fields)


def coalesced(kind: str = "succeeded", attempt: int = 1, **data) -> JobEvent:
    started = event("started", T0 + 1, attempt=attempt, wait_s=1.0)
    return carry(event(kind, T0 + 1.01, attempt=attempt, duration_s=0.01, **data), started)


# -- the executor's hold -----------------------------------------------------------------------


def test_a_held_start_is_taken_once_by_the_outcome():
    hold = StartHold(0.02)
    hold.hold(event("started", T0), now=100.0)
    assert hold.take("J1") is not None
    assert hold.take("J1") is None  # the release loop finds nothing left to publish
    assert hold.due(now=1e9) == []


def test_starts_fall_due_oldest_first_once_their_window_passes():
    hold = StartHold(0.02)
    for job_id, now in [("a", 100.0), ("b", 100.01), ("c", 100.02)]:
        hold.hold(JobEvent(job_id=job_id, type="started"), now=now)
    assert hold.next_due() == pytest.approx(100.02)
    assert hold.due(now=100.019) == []
    assert [e.job_id for e in hold.due(now=100.035)] == ["a", "b"]
    assert len(hold) == 1 and hold.next_due() == pytest.approx(100.04)
    assert hold.take("c") is not None and hold.next_due() is None


def test_a_zero_window_holds_nothing():
    assert not StartHold(0).enabled and StartHold(0.03).enabled


def test_the_outcome_carries_exactly_what_started_carried():
    started = event("started", T0 + 1, attempt=2, worker="w9", wait_s=0.25)
    outcome = carry(event("succeeded", T0 + 2, attempt=2, worker="w9", result=1), started)
    # The attempt and worker are the outcome's: not carried twice.
    assert outcome.data["started"] == {"at": T0 + 1, "wait_s": 0.25}
    back, out = parts(outcome)
    assert back == started
    assert out.type == "succeeded" and out.data == {"result": 1}


def test_a_start_of_another_attempt_or_worker_keeps_its_own():
    started = event("started", T0 + 1, attempt=1, worker="w1")
    outcome = carry(event("failed", T0 + 2, attempt=2, worker="w9"), started)
    assert outcome.data["started"] == {"at": T0 + 1, "attempt": 1, "worker_id": "w1"}
    assert parts(outcome)[0] == started


def test_events_without_a_carried_start_stand_for_themselves():
    plain = event("succeeded", T0)
    assert parts(plain) == [plain] and started_of(plain) is None
    assert parts(event("started", T0)) == [event("started", T0)]


def test_the_journal_reads_a_coalesced_outcome_as_its_outcome():
    journal = Journal()
    journal.apply(coalesced("succeeded"))
    journal.apply(coalesced("handed_back", resume=0))
    assert journal.outcome == "succeeded" and journal.marks == {0: ("handed_back", 1)}


# -- the lifecycle core and the projector -----------------------------------------------------


def test_a_coalesced_outcome_moves_the_job_as_two_reports_do():
    queued = job(stream_seq=1)
    one = queued
    for report in reports(coalesced(), seq=7):
        one = transition(one, report)
    two = transition(queued, Reported(event("started", T0 + 1, wait_s=1.0), 6))
    two = transition(two, Reported(event("succeeded", T0 + 1.01, duration_s=0.01), 7))
    assert one == two
    assert (one.status, one.started_at, one.worker_id, one.attempt) == ("succeeded", T0 + 1, "w1", 1)
    assert one.last_event_seq == 7


def test_a_replayed_coalesced_outcome_changes_nothing():
    done = job()
    for report in reports(coalesced(), seq=7):
        done = transition(done, report)
    for report in reports(coalesced(), seq=7):
        assert transition(done, report) is done


def test_the_projector_writes_started_then_the_outcome_and_counts_the_start():
    jobs = {"J1": job(stream_seq=1, updated_at=T0)}
    rows, _, tally = apply_events([(7, coalesced())], jobs)
    assert [(r["type"], r["stream_seq"], r["at"]) for r in rows] == [
        ("started", -7, T0 + 1),
        ("succeeded", 7, T0 + 1.01),
    ]
    assert rows[0]["data"] == {"wait_s": 1.0} and "started" not in rows[1]["data"]
    assert (rows[0]["attempt"], rows[0]["worker_id"]) == (1, "w1")
    assert jobs["J1"].status == "succeeded" and jobs["J1"].started_at == T0 + 1
    kinds = sorted(key[2] for key in tally.counts)
    assert kinds == ["started", "succeeded"]  # the queue-wait rollup still sees the start


def test_a_coalesced_retry_then_a_later_attempt_are_in_order():
    jobs = {"J1": job(stream_seq=1)}
    events = [
        (5, coalesced("retrying", error={"type": "E"}, delay_s=0.1)),
        (9, coalesced("succeeded", attempt=2)),
    ]
    rows, _, _ = apply_events(events, jobs)
    assert [(r["type"], r["attempt"]) for r in rows] == [
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("succeeded", 2),
    ]
    assert (jobs["J1"].status, jobs["J1"].attempt) == ("succeeded", 2)


def test_a_worker_lost_mid_run_is_still_seen_when_the_next_attempt_coalesces():
    jobs = {"J1": job(stream_seq=1)}
    rows, _, _ = apply_events([(5, event("started", T0 + 1)), (9, coalesced(attempt=2))], jobs)
    assert [r["type"] for r in rows] == ["started", "started", "worker_lost", "succeeded"]
    assert (rows[2]["attempt"], rows[2]["worker_id"]) == (1, "w1")


def test_a_worker_lost_before_its_start_was_stored_shows_the_skipped_attempt():
    # Killed inside the coalescing window: attempt 1 never reached EVENTS; attempt 2 reports.
    jobs = {"J1": job(stream_seq=1)}
    rows, _, _ = apply_events([(9, coalesced(attempt=2))], jobs)
    assert [(r["type"], r["attempt"], r["worker_id"]) for r in rows] == [
        ("started", 2, "w1"),
        ("worker_lost", 1, None),
        ("succeeded", 2, "w1"),
    ]


def test_a_start_after_a_hand_back_or_a_retry_is_no_lost_worker():
    back = job(status="queued", attempt=1)  # handed back at attempt 1: the next start repeats it
    assert not lost_worker(back, event("started", T0, attempt=1))
    assert lost_worker(back, event("started", T0, attempt=2))
    assert not lost_worker(job(), event("started", T0, attempt=1))
    retrying = job(status="retrying", attempt=1)
    assert not lost_worker(retrying, event("started", T0, attempt=2))
    assert lost_worker(retrying, event("started", T0, attempt=3))


# -- the metrics service ------------------------------------------------------------------------


def test_metrics_count_the_carried_start_and_its_queue_wait():
    metrics = Metrics(wait_target_s=60)
    record_message(metrics, coalesced().model_dump_json().encode())
    value = metrics.registry.get_sample_value
    labels = {"queue": "default", "type": "noop"}
    assert value("taskyard_jobs_started_total", labels) == 1
    assert value("taskyard_job_wait_target_total", {"queue": "default", "outcome": "met"}) == 1
    assert value("taskyard_job_queue_wait_seconds_count", {"queue": "default", "priority": "normal"}) == 1
    assert value("taskyard_jobs_finished_total", {**labels, "status": "succeeded"}) == 1


def test_an_outcome_older_than_the_one_that_ended_the_job_projected_after_it_is_a_second_run():
    """After a machine crash the job ran again (its JOBS delivery came back, as attempt 1 again)
    and that run's outcome was projected first: the projector's delivery of the older one came
    back after its ack_wait, or the catch-up replays it. A generation ends once: the older
    outcome is the other run's, whether replayed or not (CI: 5 of 600 jobs ended twice)."""
    ended = job(stream_seq=1, updated_at=T0)
    ended_by = {"J1": ended}
    apply_events([(9, coalesced())], ended_by)  # the run after the crash
    jobs = dict(ended_by)
    rows, _, _ = apply_events([(7, coalesced())], jobs)  # the run before it
    assert [r["type"] for r in rows] == ["started", "duplicate_run"]
    assert jobs["J1"] == ended_by["J1"]
