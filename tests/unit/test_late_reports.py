"""Two api processes project EVENTS at once: a job's reports can be applied out of stream order.

A retried job's next `started` projected before the `retrying` stored just before it reads as a
lost worker; the `retrying`, when it arrives, proves the attempt ended by its worker's own word.
"""

from dataclasses import replace

from taskyard_api.projector import apply_events, disproved_losses

from .records import T0, event, record


def running_attempt_1():
    return {"J1": replace(record("J1"), status="running", attempt=1, worker_id="w1", last_event_seq=10)}


def test_the_next_start_projected_first_reads_as_a_lost_worker_until_the_retry_arrives():
    retrying = (11, event("retrying", T0 + 1, attempt=1, worker="w1", error={"message": "again"}))
    started = (12, event("started", T0 + 2, attempt=2, worker="w2"))

    # The other api process took the batch with attempt 2's start first.
    jobs = running_attempt_1()
    rows, _, _ = apply_events([started], jobs)
    assert [r["type"] for r in rows] == ["started", "worker_lost"]
    assert disproved_losses([started], running_attempt_1()) == set()

    # Then this one projects the older `retrying` on the row as that batch left it.
    before = dict(jobs)
    rows, _, _ = apply_events([retrying], jobs)
    assert [r["type"] for r in rows] == ["retrying"]
    assert jobs["J1"].status == "running" and jobs["J1"].attempt == 2  # the newer start stands
    assert disproved_losses([retrying], before) == {("J1", 1)}


def test_in_stream_order_nothing_is_lost_or_disproved():
    retrying = (11, event("retrying", T0 + 1, attempt=1, worker="w1"))
    started = (12, event("started", T0 + 2, attempt=2, worker="w2"))
    jobs = running_attempt_1()
    rows, _, _ = apply_events([retrying, started], jobs)
    assert [r["type"] for r in rows] == ["retrying", "started"]
    assert disproved_losses([retrying, started], running_attempt_1()) == set()


def test_a_real_loss_is_not_disproved_by_other_late_events():
    """A progress report, an older run's report or a replay of the same event proves nothing."""
    before = {"J1": replace(running_attempt_1()["J1"], attempt=2, last_event_seq=20, generation=1)}

    def of_this_run(kind: str, attempt: int, worker: str | None, **data):
        return event(kind, T0 + 1, attempt=attempt, worker=worker, **data).model_copy(
            update={"generation": 1}
        )

    late = [
        (15, of_this_run("progress", 1, "w1", pct=50)),
        (16, event("retrying", T0 + 1, attempt=1)),  # generation 0: the run before a manual retry
        (20, of_this_run("retrying", 2, "w2")),  # the row's own last event again (a replay)
        (17, of_this_run("retrying", 1, None)),  # not a worker's report
    ]
    assert disproved_losses(late, before) == set()
    assert disproved_losses([(18, of_this_run("retrying", 1, "w1"))], before) == {("J1", 1)}


def test_a_retry_projected_before_its_own_start_leaves_no_lost_worker_at_the_next_start():
    """The other api process took attempt 1's `started`; this one projected its `retrying` first
    (seen in CI on PostgreSQL: a REST lease failed with retry right after its claim)."""
    started_1 = (10, event("started", T0 + 1, attempt=1, worker="w1"))
    retrying_1 = (11, event("retrying", T0 + 2, attempt=1, worker="w1", error={"message": "again"}))
    started_2 = (12, event("started", T0 + 3, attempt=2, worker="w2"))
    jobs = {"J1": replace(record("J1"), status="queued", last_event_seq=5)}
    kinds = []
    for batch in ([retrying_1], [started_1], [started_2]):
        rows, _, _ = apply_events(batch, jobs)
        kinds += [r["type"] for r in rows]
    assert kinds == ["retrying", "started", "started"]
    assert (jobs["J1"].status, jobs["J1"].attempt, jobs["J1"].worker_id) == ("running", 2, "w2")


def test_a_hand_back_projected_before_its_start_leaves_no_lost_worker_at_the_next_start():
    """A hand-back spends no attempt: the next start repeats its attempt number."""
    started_2 = (10, event("started", T0 + 1, attempt=2, worker="w1"))
    handed_back = (11, event("handed_back", T0 + 2, attempt=2, worker="w1"))
    started_again = (12, event("started", T0 + 3, attempt=2, worker="w2"))
    jobs = {"J1": replace(record("J1"), status="queued", attempt=1, last_event_seq=5)}
    kinds = []
    for batch in ([handed_back], [started_2], [started_again]):
        rows, _, _ = apply_events(batch, jobs)
        kinds += [r["type"] for r in rows]
    assert "worker_lost" not in kinds, kinds


def test_a_late_hand_back_or_answer_keeps_a_real_loss_of_the_same_attempt():
    """After a hand-back or a person's answer the same attempt runs again; its worker may die. A
    replay of the older report must not take that `worker_lost` row back."""
    before = {"J1": replace(running_attempt_1()["J1"], attempt=2, last_event_seq=30)}
    late = [
        (12, event("handed_back", T0 + 1, attempt=1, worker="w1")),
        (14, event("waiting", T0 + 2, attempt=1, worker="w1")),
    ]
    assert disproved_losses(late, before) == set()
