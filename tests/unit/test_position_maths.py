"""Queue position arithmetic (taskyard_api.position) with hand-built consumer numbers.

The same formulas run against a real nats-server in tests/test_position.py; here every edge is
checked in microseconds: first job, already delivered, gone, empty or missing higher priorities.
"""

from collections import deque

import pytest

from taskyard_api.position import (
    GONE,
    IN_FLIGHT,
    Position,
    add_sample,
    from_direct_get,
    higher_pending,
    rates_over,
    without_lookup,
)
from taskyard_common.topology import ConsumerSnap


def snap(priority: str, pending: int = 0, delivered: int = 0, ack_pending: int = 0, paused=False):
    return ConsumerSnap(
        queue="q",
        priority=priority,
        num_pending=pending,
        num_ack_pending=ack_pending,
        num_waiting=0,
        num_redelivered=0,
        delivered_stream_seq=delivered,
        delivered_consumer_seq=0,
        paused=paused,
    )


def found(seq: int, after: int) -> dict[str, str]:
    """Direct Get reply headers for a message that is still in the stream."""
    return {"Nats-Sequence": str(seq), "Nats-Num-Pending": str(after), "Nats-Subject": "t.jobs.q.normal"}


# Before the Direct Get: the job's own consumer may answer alone.


def test_no_consumer_for_the_priority_means_gone():
    assert without_lookup(None, 10) == Position(None, higher=0, state="gone")


@pytest.mark.parametrize("seq", [1, 41, 42])
def test_a_sequence_up_to_the_delivered_one_is_in_flight(seq):
    assert without_lookup(snap("normal", delivered=42), seq) == IN_FLIGHT


def test_a_sequence_after_the_delivered_one_needs_the_stream():
    assert without_lookup(snap("normal", delivered=42), 43) is None
    assert without_lookup(snap("normal", delivered=0), 1) is None  # nothing delivered yet


# The Direct Get answer


def test_first_job_of_an_empty_queue_is_next():
    snaps = {"normal": snap("normal", pending=1)}
    assert from_direct_get(snaps, "normal", 7, found(7, after=0)) == Position(0, higher=0)


def test_position_counts_the_jobs_before_it_on_its_own_priority():
    # 10 never-delivered normal jobs; 3 come after seq 50: 6 are before it.
    snaps = {"normal": snap("normal", pending=10, delivered=40)}
    assert from_direct_get(snaps, "normal", 50, found(50, after=3)) == Position(6, higher=0)


def test_last_job_has_everything_else_before_it():
    snaps = {"normal": snap("normal", pending=10)}
    assert from_direct_get(snaps, "normal", 99, found(99, after=0)).position == 9


def test_in_flight_jobs_of_the_queue_do_not_count():
    # num_ack_pending (delivered, running) is not ahead of a waiting job: only num_pending is.
    snaps = {"normal": snap("normal", pending=3, ack_pending=8)}
    assert from_direct_get(snaps, "normal", 5, found(5, after=1)) == Position(1, higher=0)


def test_strict_priority_adds_every_higher_priority_backlog():
    snaps = {
        "high": snap("high", pending=4, ack_pending=2),
        "normal": snap("normal", pending=5),
        "low": snap("low", pending=6),
    }
    assert from_direct_get(snaps, "low", 30, found(30, after=2)) == Position(4 + 5 + 3, higher=9)
    assert from_direct_get(snaps, "normal", 20, found(20, after=4)) == Position(4 + 0, higher=4)
    # High has nothing above it; the backlogs below it never count.
    assert from_direct_get(snaps, "high", 10, found(10, after=0)) == Position(3, higher=0)


def test_empty_or_missing_higher_priorities_add_nothing():
    snaps = {"high": snap("high", pending=0), "low": snap("low", pending=2)}  # no normal consumer
    assert higher_pending(snaps, "low") == 0
    assert from_direct_get(snaps, "low", 8, found(8, after=1)) == Position(0, higher=0)


def test_higher_pending_per_priority():
    snaps = {p: snap(p, pending=n) for p, n in (("high", 1), ("normal", 20), ("low", 300))}
    assert [higher_pending(snaps, p) for p in ("high", "normal", "low")] == [0, 1, 21]


def test_a_paused_queue_keeps_its_positions():
    # Pausing stops deliveries, not the order: the position is what it will be on resume.
    snaps = {"high": snap("high", pending=2, paused=True), "normal": snap("normal", pending=3, paused=True)}
    assert from_direct_get(snaps, "normal", 9, found(9, after=0)) == Position(4, higher=2, paused=True)


def test_a_stale_num_pending_is_clamped_to_zero_not_negative():
    # The cached consumer says 2 pending, the newer Direct Get sees 5 after it.
    snaps = {"normal": snap("normal", pending=2)}
    assert from_direct_get(snaps, "normal", 3, found(3, after=5)) == Position(0, higher=0)


@pytest.mark.parametrize(
    "headers",
    [
        {"Status": "404", "Description": "Message Not Found"},  # nothing at or after seq on the subject
        found(12, after=0),  # the job (seq 11) was deleted: the next message on its subject answered
        {},  # no headers at all
    ],
)
def test_a_reply_for_another_message_means_gone(headers):
    snaps = {"normal": snap("normal", pending=4)}
    assert from_direct_get(snaps, "normal", 11, headers) == GONE


# Rates from (time, delivered consumer seq, num_pending) samples


def test_rates_over_the_window():
    samples = deque([(0.0, 0, 10), (50.0, 100, 20), (60.0, 130, 15), (70.0, 150, 5)])
    # Window 60 s back from t=70: the oldest sample inside it is t=50 (t=0 is outside).
    # 150 - 100 deliveries over 20 s; the backlog went 20 → 5: arrivals = (50 + 5 - 20) / 20.
    assert rates_over(samples, 60.0) == (2.5, 1.75)
    # Window 10 s: t=60 → t=70.
    assert rates_over(samples, 10.0) == (2.0, 1.0)
    # Window 100 s reaches the first sample: 150 over 70 s, arrivals (150 - 5) / 70.
    assert rates_over(samples, 100.0) == pytest.approx((150 / 70, 145 / 70))


def test_arrivals_are_never_negative_when_jobs_are_cancelled():
    # Nothing delivered, backlog shrank (cancels): 0 arrivals, not a negative rate.
    assert rates_over([(0.0, 5, 10), (10.0, 5, 4)], 60.0) == (0.0, 0.0)


@pytest.mark.parametrize("samples", [[], [(3.0, 7, 1)], [(3.0, 7, 1), (3.0, 9, 1)]])
def test_no_rate_without_two_samples_apart_in_time(samples):
    assert rates_over(samples, 60.0) == (0.0, 0.0)


def test_the_newest_sample_is_always_the_latest_read():
    # Reads 0.1 s apart: points stay 0.25 s apart or more, and the last is the read just made, so
    # a delivery between two throttled reads shows at once (the failure CI saw: a lone REST
    # worker's start missed, its queue's ETA unknown).
    samples: deque = deque()
    for i, delivered in enumerate([0, 0, 0, 1, 1, 2]):
        add_sample(samples, (i * 0.1, delivered, 0), every_s=0.25, keep_s=60.0)
    assert [s[0] for s in samples] == pytest.approx([0.0, 0.3, 0.5])  # 0.3 then 0.4, 0.5
    assert samples[-1][1] == 2
    assert rates_over(samples, 60.0)[0] == pytest.approx(2 / 0.5)


def test_samples_older_than_kept_are_dropped():
    samples: deque = deque()
    for t in [0.0, 1.0, 2.0, 70.0]:
        add_sample(samples, (t, 0, 0), every_s=0.25, keep_s=65.0)
    assert [s[0] for s in samples] == [70.0]
