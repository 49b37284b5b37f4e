"""The reconciler's decision (reconcile_rule) and the core's `Resend`, without NATS or a database."""

import pytest

from taskyard_api.lifecycle import Decided, Resend, transition
from taskyard_api.reconcile import recreated
from taskyard_api.reconcile_rule import DecisionRepair, Suspect, decision_repair, row_key, verdict
from taskyard_common.schemas import JobSpec

from .records import T0, record

NOW = T0 + 100
MIN_AGE = 30.0


def queued(**fields):
    return record(**{"stream_seq": 7, "outbox_at": None, "updated_at": T0, **fields})


def judge(job, *, there=False, runs=False, suspect=None, projected=0, now=NOW):
    return verdict(
        job,
        message_there=there,
        worker_runs_it=runs,
        suspect=suspect,
        projected_upto=projected,
        now=now,
        min_age_s=MIN_AGE,
    )


def test_a_job_whose_message_is_there_is_left_alone():
    assert judge(queued(), there=True) == "ok"


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "waiting"},  # a checkpoint: its message was acked on purpose
        {"status": "succeeded"},
        {"status": "scheduled"},  # a gate holds it: nothing in JOBS yet
        {"outbox_at": T0},  # not published yet: the outbox's job
        {"stream_seq": None},
    ],
)
def test_only_rows_whose_message_should_be_in_jobs_are_judged(fields):
    assert judge(queued(**fields)) == "ok"


def test_a_job_that_moved_within_min_age_is_never_touched():
    # Just published (the sequence recorded a moment ago) or just started: too young to judge.
    assert judge(queued(), now=T0 + MIN_AGE - 0.01) == "young"
    running = queued(status="running", worker_id="w1", attempt=1)
    assert judge(running, now=T0 + 1) == "young"


def test_a_first_sighting_only_notes_the_job():
    assert judge(queued()) == "suspect"


def test_a_missing_message_is_resent_once_the_projector_passed_the_watermark():
    job = queued()
    note = Suspect(row_key(job), watermark=500)
    # Events up to 499 projected: an outcome stored before the message's ack may still come.
    assert judge(job, suspect=note, projected=499) == "wait"
    assert judge(job, suspect=note, projected=500) == "republish"
    retrying = queued(status="retrying")
    assert judge(retrying, suspect=Suspect(row_key(retrying), 5), projected=5) == "republish"


def test_a_row_that_moved_since_the_note_is_noted_again():
    note = Suspect(row_key(queued()), watermark=10)
    # An outcome was projected meanwhile (last_event_seq moved): judged afresh, not resent.
    assert judge(queued(last_event_seq=9), suspect=note, projected=10) == "suspect"
    # A new message (another sequence): the same.
    assert judge(queued(stream_seq=8), suspect=note, projected=10) == "suspect"


def test_a_running_job_is_requeued_only_when_no_live_worker_holds_it():
    job = queued(status="running", worker_id="w1", attempt=2)
    note = Suspect(row_key(job), watermark=10)
    assert judge(job, suspect=note, projected=10, runs=True) == "ok"
    assert judge(job, suspect=note, projected=10) == "requeue"


def test_resend_queues_the_job_again_with_its_message_due_under_the_same_id():
    job = queued(status="running", worker_id="w1", attempt=2)
    again = transition(job, Resend(NOW))
    assert (again.status, again.worker_id, again.stream_seq, again.outbox_at) == ("queued", None, None, NOW)
    assert (again.generation, again.resume, again.attempt, again.msg_id) == (0, 0, 2, job.msg_id)


@pytest.mark.parametrize("status", ["succeeded", "cancelled", "waiting", "blocked"])
def test_resend_leaves_a_job_that_moved_on(status):
    job = queued(status=status)
    assert transition(job, Resend(NOW)) is job


def test_resend_of_a_job_already_due_changes_nothing():
    job = queued(outbox_at=T0)
    assert transition(job, Resend(NOW)) is job


def test_a_lost_row_is_recreated_from_its_message():
    spec = JobSpec(
        id="01J0000000000000000000000X", type="echo", payload={"a": 1}, labels={"t": "x"}, generation=1
    )
    job = recreated(spec, seq=42, owner_id="k1", now=NOW)
    assert (job.status, job.stream_seq, job.outbox_at, job.owner_id) == ("queued", 42, None, "k1")
    assert (job.payload, job.labels, job.generation, job.msg_id) == ({"a": 1}, {"t": "x"}, 1, spec.msg_id)
    assert job.artifacts is None and job.created_at == spec.submitted_at


# -- decisions -----------------------------------------------------------------------------------


def continued(**fields):
    """A job past its checkpoint of generation 0: queued again for its continuation (resume 1)."""
    return record(
        **{"status": "queued", "resume": 1, "stream_seq": 9, "outbox_at": None, "updated_at": T0, **fields}
    )


def repair(job, **given):
    facts = {
        "ck_generation": 0,
        "ck_status": "approved",
        "gate": False,
        "decided_at": T0,
        "in_journal": True,
        "pending_here": False,
        "continuation_due": False,
        "goes_on": True,
        "now": NOW,
        "min_age_s": MIN_AGE,
        **given,
    }
    return decision_repair(job, **facts)


def test_a_decision_in_the_journal_needs_nothing():
    assert repair(continued()) == DecisionRepair()
    assert repair(continued(status="running")) == DecisionRepair()


def test_a_decision_the_journal_lost_is_sent_again_while_a_run_will_read_it():
    for status in ("queued", "running", "retrying", "waiting"):
        assert repair(continued(status=status), in_journal=False).republish


@pytest.mark.parametrize(
    "given",
    [
        {"ck_status": "pending"},  # nothing decided yet
        {"gate": True},  # an approval before the start: no run reads it
        {"ck_generation": 1},  # the job was retried since: its new generation asks again
        {"decided_at": NOW - MIN_AGE + 1},  # just decided: its own publish may be on its way
        {"decided_at": None},
    ],
)
def test_a_decision_no_run_will_read_or_too_young_is_left_alone(given):
    assert repair(continued(), in_journal=False, **given) == DecisionRepair()


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "dead"])
def test_a_finished_job_needs_no_decision(status):
    assert repair(continued(status=status), in_journal=False) == DecisionRepair()


def test_a_job_parked_again_at_its_decided_checkpoint_is_resumed():
    parked = continued(status="waiting")
    assert repair(parked, in_journal=False) == DecisionRepair(republish=True, resume=True)
    # Its decision was sent again meanwhile: the job still needs a run that reads it.
    assert repair(parked) == DecisionRepair(resume=True)
    again = transition(parked, Decided(0, NOW, None))
    assert (again.status, again.resume, again.outbox_at) == ("queued", 2, NOW)


def test_a_parked_job_is_not_resumed_when_it_waits_rightly_or_its_continuation_will_run():
    parked = continued(status="waiting")
    assert not repair(parked, pending_here=True).resume  # waiting at its next checkpoint
    assert not repair(parked, continuation_due=True).resume  # that run will read the decision
    assert not repair(parked, goes_on=False).resume  # a rejection that fails it: the API failed it
    assert not repair(continued(status="waiting", updated_at=NOW - 1)).resume  # parked a moment ago
