"""Attempts are counted from the job's journal, not JetStream's delivery count: a hand-back is no
attempt, and neither is a delivery that never reached a worker."""

from taskyard_common.schemas import JobEvent
from taskyard_executor.checkpoints import Journal, attempt_of


def journal_of(*events: tuple[str, dict], attempt: int = 1) -> Journal:
    journal = Journal()
    for kind, data in events:
        journal.apply(JobEvent(job_id="J", type=kind, attempt=data.pop("attempt", attempt), data=data))
    return journal


def test_a_redelivery_after_a_hand_back_is_the_same_attempt():
    assert attempt_of(2, journal_of(("handed_back", {"resume": 0})), resume=0) == 1


def test_a_redelivery_without_a_hand_back_is_the_next_attempt():
    assert attempt_of(2, journal_of(("started", {})), resume=0) == 2


def test_hand_backs_of_an_earlier_continuation_do_not_count():
    # After a checkpoint decision the job is a new message (resume 1): its deliveries start at 1.
    journal = journal_of(("handed_back", {"resume": 0}), ("handed_back", {"resume": 0}))
    assert attempt_of(1, journal, resume=1) == 1
    assert attempt_of(2, journal, resume=1) == 2
    assert attempt_of(3, journal, resume=0) == 1


def test_deliveries_that_reached_no_worker_are_no_attempt():
    # Attempt 2 started (journaled); deliveries 3 and 4 went to a hung node's client.
    journal = journal_of(("started", {"resume": 0, "attempt": 2}))
    assert attempt_of(5, journal, resume=0) == 3
    # Nothing journaled: only the first delivery (its start is in a batch) may have run.
    assert attempt_of(6, Journal(), resume=0) == 2


def test_the_last_mark_of_the_continuation_counts():
    journal = journal_of(
        ("started", {"resume": 0, "attempt": 2}),
        ("handed_back", {"resume": 0, "attempt": 2}),
        ("started", {"resume": 1, "attempt": 4}),
    )
    assert attempt_of(3, journal, resume=0) == 2  # attempt 2 was handed back: it runs again
    assert attempt_of(2, journal, resume=1) == 5
    assert attempt_of(2, journal, resume=2) == 2
