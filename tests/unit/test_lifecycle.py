"""The lifecycle core, move by move: every command in every state, every executor report."""

from dataclasses import FrozenInstanceError, replace

import pytest

from taskyard_api import lifecycle
from taskyard_api.failures import Refused
from taskyard_api.lifecycle import (
    COLUMNS,
    GATED_STATES,
    Admitted,
    Approved,
    Cancel,
    Decided,
    Due,
    JobRecord,
    Published,
    Rearm,
    Released,
    Reported,
    Retry,
    Skipped,
    Unrunnable,
    changes,
    lost_worker,
    new_job,
    transition,
)
from taskyard_api.models import Job
from taskyard_common.schemas import FINAL_STATES, JobEvent, JobState

T0 = 1_700_000_000.0
STATES = [s.value for s in JobState]
UNFINISHED = [s for s in STATES if s not in FINAL_STATES]
SPEC = {
    "type": "noop",
    "queue": "default",
    "priority": "normal",
    "payload": {"n": 1},
    "labels": {},
    "timeout_s": 60.0,
    "max_attempts": 3,
    "backoff": {"base_s": 1.0, "factor": 2.0, "max_s": 300.0},
    "idempotency_key": None,
}


def job(**fields) -> JobRecord:
    return replace(new_job(id="J1", owner_id="k1", now=T0, traceparent=None, **SPEC), **fields)


def report(
    kind: str, seq: int, attempt: int = 1, generation: int = 0, at: float = T0 + 5, **data
) -> Reported:
    event = JobEvent(
        job_id="J1", type=kind, at=at, attempt=attempt, worker_id="w1", generation=generation, data=data
    )
    return Reported(event, seq)


def test_the_record_has_a_field_for_every_column_and_no_other():
    assert set(COLUMNS) == set(Job.__table__.columns.keys())


def test_the_fast_copy_and_build_are_the_dataclass_ones_and_stay_frozen():
    original = job(status="running", attempt=2)
    copied = lifecycle.replace(original, status="succeeded", result={"ok": 1})
    assert copied == replace(original, status="succeeded", result={"ok": 1})
    assert original.status == "running"  # the copy changed nothing of the original
    assert lifecycle.record_from(getattr(original, name) for name in COLUMNS) == original
    with pytest.raises(FrozenInstanceError):
        copied.status = "failed"  # type: ignore[misc]
    with pytest.raises(KeyError):
        lifecycle.replace(original, no_such_field=1)
    with pytest.raises(ValueError):  # every field or none: a short row is not a record
        lifecycle.record_from(["J1", "noop"])


def test_a_new_job_is_queued_with_its_message_due():
    new = job()
    assert (new.status, new.outbox_at, new.stream_seq, new.attempt, new.generation) == (
        "queued",
        T0,
        None,
        0,
        0,
    )
    assert new.msg_id == "J1"


def test_published_records_the_seq_and_ends_the_outbox_wait():
    after = transition(job(), Published(seq=42, generation=0, resume=0))
    assert (after.status, after.stream_seq, after.outbox_at) == ("queued", 42, None)
    assert changes(job(), after) == {"stream_seq": 42, "outbox_at": None}


def test_the_ack_of_an_older_message_changes_nothing():
    retried = job(generation=1, outbox_at=T0 + 9)
    assert transition(retried, Published(seq=7, generation=0, resume=0)) is retried
    resumed = job(resume=2, outbox_at=T0 + 9)
    assert transition(resumed, Published(seq=7, generation=0, resume=1)) is resumed


@pytest.mark.parametrize("status", UNFINISHED)
def test_cancel_ends_every_unfinished_job(status):
    before = job(status=status, stream_seq=5, outbox_at=None)
    after = transition(before, Cancel(at=T0 + 3))
    assert (after.status, after.finished_at, after.updated_at) == ("cancelled", T0 + 3, T0 + 3)
    assert after.finished


def test_cancel_of_an_unpublished_job_drops_it_from_the_outbox():
    assert transition(job(), Cancel(at=T0 + 1)).outbox_at is None


@pytest.mark.parametrize("status", sorted(FINAL_STATES))
def test_cancel_of_a_finished_job_is_refused(status):
    with pytest.raises(Refused, match=f"job J1 is already {status}"):
        transition(job(status=status), Cancel(at=T0))


@pytest.mark.parametrize("status", ["failed", "dead", "cancelled"])
def test_retry_runs_an_ended_job_again_as_a_new_generation(status):
    before = job(
        status=status, attempt=3, stream_seq=9, outbox_at=None, error={"type": "X"}, worker_id="w1",
        finished_at=T0 + 2, resume=2,
    )  # fmt: skip
    after = transition(before, Retry(at=T0 + 10))
    assert (after.status, after.generation, after.resume, after.attempt) == ("queued", 1, 0, 0)
    assert (after.stream_seq, after.outbox_at, after.error, after.finished_at, after.worker_id) == (
        None, T0 + 10, None, None, None,
    )  # fmt: skip
    assert after.msg_id == "J1:1:0"


@pytest.mark.parametrize("status", [s for s in STATES if s not in ("failed", "dead", "cancelled")])
def test_retry_of_a_job_that_has_not_failed_is_refused(status):
    with pytest.raises(Refused, match=f"job J1 is {status}; only failed, dead or cancelled jobs retry"):
        transition(job(status=status), Retry(at=T0))


def test_an_approval_resumes_the_waiting_job_with_a_new_message():
    waiting = job(status="waiting", attempt=1, stream_seq=4, outbox_at=None)
    after = transition(waiting, Decided(generation=0, at=T0 + 8))
    assert (after.status, after.resume, after.generation, after.attempt) == ("queued", 1, 0, 1)
    assert (after.stream_seq, after.outbox_at) == (None, T0 + 8)
    assert after.msg_id == "J1:0:1"


def test_a_rejection_fails_the_waiting_job():
    error = {"type": "CheckpointRejected", "message": "no"}
    after = transition(job(status="waiting"), Decided(generation=0, at=T0 + 8, error=error))
    assert (after.status, after.error, after.finished_at) == ("failed", error, T0 + 8)


@pytest.mark.parametrize("status", [s for s in STATES if s != "waiting"])
def test_a_decision_for_a_job_that_moved_on_changes_nothing(status):
    before = job(status=status)
    assert transition(before, Decided(generation=0, at=T0)) is before


def test_a_decision_of_an_older_generation_changes_nothing():
    before = job(status="waiting", generation=2)
    assert transition(before, Decided(generation=1, at=T0)) is before


def test_started_runs_the_job_on_its_worker():
    after = transition(job(), report("started", seq=3, attempt=1))
    assert (after.status, after.attempt, after.worker_id, after.started_at) == ("running", 1, "w1", T0 + 5)
    assert after.last_event_seq == 3


def test_a_later_start_keeps_the_first_start_time():
    running = job(status="running", attempt=1, worker_id="w1", started_at=T0 + 1, last_event_seq=3)
    after = transition(running, report("started", seq=9, attempt=2, at=T0 + 70))
    assert (after.attempt, after.started_at) == (2, T0 + 1)


def test_a_hand_back_queues_the_job_again_without_spending_its_attempt():
    running = job(status="running", attempt=1, worker_id="w1", started_at=T0 + 1, last_event_seq=3)
    back = transition(running, report("handed_back", seq=4, attempt=1))
    assert (back.status, back.worker_id, back.attempt) == ("queued", None, 1)
    again = transition(back, report("started", seq=5, attempt=1, at=T0 + 9))
    assert (again.status, again.attempt, again.started_at) == ("running", 1, T0 + 1)
    assert not lost_worker(back, report("started", seq=5, attempt=1).event)


def test_progress_waiting_and_retrying():
    running = job(status="running", attempt=1, worker_id="w1")
    assert transition(running, report("progress", seq=4, done=3)).progress == {"done": 3}
    assert transition(running, report("progress", seq=4)).status == "running"
    parked = transition(running, report("waiting", seq=4))
    assert (parked.status, parked.worker_id) == ("waiting", None)
    backing_off = transition(running, report("retrying", seq=4, error={"type": "E"}))
    assert (backing_off.status, backing_off.error) == ("retrying", {"type": "E"})


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "dead", "cancelled"])
def test_an_outcome_ends_the_job(outcome):
    running = job(status="running", attempt=2, worker_id="w1", error={"type": "Old"})
    after = transition(running, report(outcome, seq=8, attempt=2, result={"ok": 1}, error={"type": "E"}))
    assert (after.status, after.finished_at, after.attempt) == (outcome, T0 + 5, 2)
    expected = {
        "succeeded": ({"ok": 1}, None),
        "failed": (None, {"type": "E"}),
        "dead": (None, {"type": "E"}),
        "cancelled": (None, {"type": "Old"}),
    }
    assert (after.result, after.error) == expected[outcome]


@pytest.mark.parametrize("status", sorted(FINAL_STATES))
@pytest.mark.parametrize(
    "kind", ["started", "progress", "retrying", "waiting", "succeeded", "failed", "dead"]
)
def test_a_finished_job_stays_finished_whatever_is_reported_after(status, kind):
    ended = job(status=status, finished_at=T0 + 1, last_event_seq=5)
    after = transition(ended, report(kind, seq=6))
    assert after == replace(ended, last_event_seq=6)


def test_a_replayed_event_changes_nothing():
    seen = job(status="running", attempt=1, worker_id="w1", last_event_seq=10)
    assert transition(seen, report("succeeded", seq=10)) is seen
    assert transition(seen, report("succeeded", seq=4)) is seen


def test_an_event_of_an_older_generation_only_advances_the_sequence():
    retried = job(status="queued", generation=1)
    after = transition(retried, report("failed", seq=12, generation=0))
    assert after == replace(retried, last_event_seq=12)


@pytest.mark.parametrize("kind", ["queued", "step", "decided", "cancel_requested", "retried", "worker_lost"])
def test_timeline_only_events_move_no_state(kind):
    running = job(status="running", attempt=1, worker_id="w1")
    after = transition(running, report(kind, seq=7, at=T0 + 9))
    assert changes(running, after) == {"last_event_seq": 7, "updated_at": T0 + 9}


def test_updated_at_never_goes_back():
    fresh = job(status="running", attempt=1, worker_id="w1", updated_at=T0 + 50)
    assert transition(fresh, report("progress", seq=7, at=T0 + 9)).updated_at == T0 + 50


def test_a_start_of_a_later_attempt_on_a_running_job_means_its_worker_was_lost():
    running = job(status="running", attempt=1, worker_id="w1")
    assert lost_worker(running, report("started", seq=5, attempt=2).event)
    assert not lost_worker(running, report("started", seq=5, attempt=1).event)
    assert not lost_worker(job(status="retrying", attempt=1), report("started", seq=5, attempt=2).event)
    assert not lost_worker(running, report("succeeded", seq=5, attempt=2).event)


def test_changes_name_only_what_moved():
    before = job()
    assert changes(before, before) == {}
    assert changes(before, replace(before, status="running", attempt=1)) == {
        "status": "running",
        "attempt": 1,
    }


def test_the_record_is_frozen():
    with pytest.raises(AttributeError):
        job().status = "running"  # type: ignore[misc]


def test_an_unknown_event_is_a_programming_error():
    with pytest.raises(TypeError):
        transition(job(), "started")  # type: ignore[arg-type]


def test_a_job_with_parents_starts_blocked_with_nothing_to_publish():
    blocked = new_job(id="J1", owner_id="k1", now=T0, traceparent=None, blocked=True, **SPEC)
    assert (blocked.status, blocked.outbox_at, blocked.finished) == ("blocked", None, False)


def test_released_queues_a_blocked_job_with_its_inputs():
    blocked = job(status="blocked", outbox_at=None)
    after = transition(blocked, Released(at=T0 + 4, payload={"n": 1, "x": 2}))
    assert (after.status, after.outbox_at, after.payload) == ("queued", T0 + 4, {"n": 1, "x": 2})


def test_skipped_and_unrunnable_end_a_blocked_job_naming_why():
    blocked = job(status="blocked", outbox_at=None)
    skipped = transition(blocked, Skipped(at=T0 + 4, parent_id="P", why="parent P failed"))
    assert (skipped.status, skipped.finished_at, skipped.error["parent"]) == ("skipped", T0 + 4, "P")
    assert "parent_name" not in skipped.error
    named = transition(blocked, Skipped(at=T0 + 4, parent_id="P", why="w", parent_name="scan"))
    assert (named.error["parent"], named.error["parent_name"]) == ("P", "scan")
    failed = transition(blocked, Unrunnable(at=T0 + 4, error={"type": "InputMissing", "message": "m"}))
    assert (failed.status, failed.error["type"]) == ("failed", "InputMissing")


@pytest.mark.parametrize("status", [s for s in STATES if s != "blocked"])
def test_gate_moves_leave_a_job_that_is_not_blocked_alone(status):
    before = job(status=status)
    assert transition(before, Released(at=T0, payload=None)) is before
    assert transition(before, Unrunnable(at=T0, error={})) is before
    if status not in GATED_STATES:  # a stopped workflow skips what any gate still holds
        assert transition(before, Skipped(at=T0, parent_id="P", why="w")) is before


# --- time and flow gates -------------------------------------------------------------------------


def gated(**fields) -> JobRecord:
    return new_job(id="J1", owner_id="k1", now=T0, traceparent=None, **{**SPEC, **fields})


def test_a_job_passes_its_gates_in_order_parents_time_approval_keys():
    approval = {"approvers": ["admin"], "expires_at": T0 + 60, "decision": None}
    every = dict(run_at=T0 + 5, approval=approval, concurrency_key="k", concurrency={"limit": 1})
    blocked = new_job(id="J1", owner_id="k1", now=T0, traceparent=None, blocked=True, **{**SPEC, **every})
    assert blocked.status == "blocked"
    scheduled = transition(blocked, Released(at=T0 + 1, payload=None))
    assert (scheduled.status, scheduled.outbox_at) == ("scheduled", None)
    assert transition(scheduled, Due(at=T0 + 4.9)) is scheduled  # too early: the timer woke early
    held = transition(scheduled, Due(at=T0 + 5))
    assert (held.status, held.outbox_at) == ("needs_approval", None)
    throttled = transition(held, Approved(at=T0 + 6, approved=True, by="ops"))
    assert (throttled.status, throttled.outbox_at, throttled.approval["decision"]["by"]) == (
        "throttled",
        None,
        "ops",
    )
    queued = transition(throttled, Admitted(at=T0 + 7))
    assert (queued.status, queued.outbox_at) == ("queued", T0 + 7)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"run_at": T0 + 1}, "scheduled"),
        ({"run_at": T0 - 1}, "queued"),  # a time in the past is now
        ({"approval": {"approvers": ["admin"], "decision": None}}, "needs_approval"),
        ({"rate_key": "openai", "rate": {"per_s": 5, "burst": 1}}, "throttled"),
        ({"concurrency_key": "tenant:a", "concurrency": {"limit": 2}}, "throttled"),
        ({}, "queued"),
    ],
)
def test_a_new_job_starts_at_its_first_closed_gate(fields, status):
    job_ = gated(**fields)
    assert (job_.status, job_.outbox_at) == (status, T0 if status == "queued" else None)


def test_a_rejected_or_expired_approval_cancels_the_job_with_the_decision():
    held = gated(approval={"approvers": ["admin"], "decision": None})
    rejected = transition(held, Approved(at=T0 + 3, approved=False, by="ops", comment="not today"))
    assert (rejected.status, rejected.finished_at) == ("cancelled", T0 + 3)
    assert rejected.error == {"type": "ApprovalRejected", "message": "rejected by ops: not today"}
    expired = transition(held, Approved(at=T0 + 3, approved=False, by=None))
    assert expired.error["message"] == "approval expired"
    with pytest.raises(Refused):
        transition(job(status="queued"), Approved(at=T0, approved=True, by="ops"))


@pytest.mark.parametrize("status", [s for s in STATES if s != "throttled"])
def test_admitted_and_due_move_only_their_own_gate(status):
    before = job(status=status, run_at=T0 - 1)
    assert transition(before, Admitted(at=T0)) is before
    if status != "scheduled":
        assert transition(before, Due(at=T0)) is before


def test_a_retry_with_a_delay_is_scheduled_and_a_retry_with_a_key_is_throttled():
    failed = job(status="failed", concurrency_key="k", concurrency={"limit": 1})
    later = transition(failed, Retry(at=T0, run_at=T0 + 30))
    assert (later.status, later.run_at, later.generation, later.outbox_at) == ("scheduled", T0 + 30, 1, None)
    now = transition(failed, Retry(at=T0))
    assert (now.status, now.run_at) == ("throttled", None)


@pytest.mark.parametrize("status", sorted(GATED_STATES))
def test_a_gated_job_cancels(status):
    after = transition(job(status=status, outbox_at=None), Cancel(at=T0 + 2))
    assert (after.status, after.finished_at) == ("cancelled", T0 + 2)


@pytest.mark.parametrize("status", ["failed", "dead", "cancelled", "skipped"])
def test_rearm_makes_an_ended_descendant_wait_again_as_a_new_generation(status):
    after = transition(job(status=status, attempt=2, error={"type": "E"}), Rearm(at=T0 + 9))
    assert (after.status, after.generation, after.attempt, after.error, after.outbox_at) == (
        "blocked",
        1,
        0,
        None,
        None,
    )


@pytest.mark.parametrize("status", ["succeeded", "queued", "running", "blocked"])
def test_rearm_leaves_a_succeeded_or_unfinished_job_alone(status):
    before = job(status=status)
    assert transition(before, Rearm(at=T0)) is before


def test_a_skipped_job_is_not_retried_on_its_own():
    with pytest.raises(Refused):
        transition(job(status="skipped"), Retry(at=T0))
