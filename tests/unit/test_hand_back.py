"""A handed-back delivery is no attempt: attempt = deliveries − hand-backs of the same message."""

from taskyard_common.schemas import JobEvent
from taskyard_executor.checkpoints import Journal, attempt_of


def journal_of(*events: tuple[str, dict]) -> Journal:
    journal = Journal()
    for kind, data in events:
        journal.apply(JobEvent(job_id="J", type=kind, attempt=1, data=data))
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
