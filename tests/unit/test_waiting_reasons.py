"""Every waiting reason (taskyard_api.reasons) from hand-built inputs: exact codes, messages,
evidence and ETAs. tests/test_position.py checks the same answers through the real stack."""

import pytest

from taskyard_api.position import IN_FLIGHT, Position
from taskyard_api.reasons import (
    checkpoint_reason,
    eta,
    publishing_reason,
    queued_reason,
    retry_reason,
    seconds_text,
)
from taskyard_api.workers import WorkerView
from taskyard_common.schemas import Heartbeat, RunningJob


def worker(wid: str, state: str = "healthy", slots: int = 2, running: int = 0, age_s: float = 1.0):
    hb = Heartbeat(
        id=wid,
        host="h",
        pid=1,
        version="test",
        queues=["q"],
        slots=slots,
        running=[
            RunningJob(id=f"{wid}-j{i}", type="noop", queue="q", started_at=0.0) for i in range(running)
        ],
        started_at=0.0,
    )
    return WorkerView(hb, state, age_s, [])


def code(out: dict) -> str:
    return out["waiting_reason"]["code"]


# Before NATS or between attempts: publishing, retrying, waiting at a checkpoint


def test_publishing():
    assert publishing_reason(1_700_000_000.0) == {
        "code": "publishing",
        "message": "Accepted and stored; being handed to NATS (the outbox publishes it if the first try failed).",
        "evidence": {"since": "2023-11-14T22:13:20Z"},
    }


def test_retry_backoff_names_the_attempt_error_and_next_try():
    data = {"next_at": 1_700_000_030.0, "error": {"message": "exit 3"}, "delay_s": 30}
    assert retry_reason(2, 5, data, now=1_700_000_000.0) == {
        "code": "retry_backoff",
        "message": "Attempt 2 of 5 failed (exit 3); next try at 2023-11-14T22:13:50Z (in 30s).",
        "evidence": {"attempt": 2, "next_at": "2023-11-14T22:13:50Z", "error": "exit 3"},
    }


def test_retry_backoff_past_its_time_or_without_an_event():
    late = retry_reason(1, 3, {"next_at": 100.0, "error": {}}, now=160.0)
    assert late["message"] == "Attempt 1 of 3 failed (an error); next try at 1970-01-01T00:01:40Z (in 0s)."
    none = retry_reason(1, 3, {}, now=0.0)
    assert none["message"] == "Attempt 1 of 3 failed (an error); next try soon."
    assert none["evidence"] == {"attempt": 1, "next_at": None, "error": "an error"}


def test_waiting_approval_and_waiting_answer():
    approval = checkpoint_reason(
        {"id": "ck1", "name": "deploy", "kind": "approval", "approvers": ["ops", "lead"], "expires_at": 0.0}
    )
    assert approval == {
        "code": "waiting_approval",
        "message": "Waiting for approval of `deploy` by ops, lead (expires at 1970-01-01T00:00:00Z); "
        "it holds no worker slot.",
        "evidence": {
            "checkpoint_id": "ck1",
            "name": "deploy",
            "approvers": ["ops", "lead"],
            "expires_at": "1970-01-01T00:00:00Z",
        },
    }
    answer = checkpoint_reason({"id": "ck2", "kind": "question", "message": "Which region?"})
    assert answer["code"] == "waiting_answer"
    assert answer["message"] == (
        "Waiting for an answer to 'Which region?' by admin (expires at None); it holds no worker slot."
    )


# Queued in NATS: the first reason that applies wins


def test_paused_queue_wins_over_everything():
    # Even with no worker at all and the job already delivered.
    out = queued_reason("q", IN_FLIGHT, paused=True, serving=[], rate_long=0.0, rate_short=0.0)
    assert out["waiting_reason"] == {
        "code": "queue_paused",
        "message": "Queue `q` is paused by an admin; resume it to continue.",
        "evidence": {},
    }


def test_a_paused_queue_gives_no_eta_even_with_recent_starts():
    out = queued_reason("q", Position(2), paused=True, serving=[worker("w1")], rate_long=5.0, rate_short=5.0)
    assert code(out) == "queue_paused"
    assert (out["queue_position"], out["eta_seconds"], out["eta_range"]) == (2, None, None)


def test_delivered_job_is_starting():
    out = queued_reason("q", IN_FLIGHT, paused=False, serving=[], rate_long=1.0, rate_short=1.0)
    assert code(out) == "starting"
    assert out["queue_position"] is None and out["eta_seconds"] is None and out["eta_range"] is None


def test_no_worker_ever_served_the_queue():
    out = queued_reason("q", Position(0), paused=False, serving=[], rate_long=0.0, rate_short=0.0)
    assert out["waiting_reason"] == {
        "code": "no_workers",
        "message": "No worker is serving queue `q`. Start one: python -m taskyard_executor --queues q",
        "evidence": {},
    }
    assert out["queue_position"] == 0
    assert (out["eta_seconds"], out["eta_range"]) == (None, None)  # no slot, no rate: unknown


def test_no_live_worker_names_the_most_recently_seen_one():
    serving = [worker("w-old", "gone", age_s=900.0), worker("w-new", "gone", age_s=42.4)]
    out = queued_reason("q", Position(3), paused=False, serving=serving, rate_long=0.0, rate_short=0.0)
    assert out["waiting_reason"] == {
        "code": "no_workers",
        "message": "No live worker serves queue `q`; the last one (w-new) was gone, last seen 42s ago. "
        "Start one: python -m taskyard_executor --queues q",
        "evidence": {"last_worker": "w-new", "last_seen_s": 42.4},
    }


def test_a_draining_worker_is_not_live():
    out = queued_reason(
        "q", Position(0), paused=False, serving=[worker("w1", "draining")], rate_long=0, rate_short=0
    )
    assert code(out) == "no_workers"
    assert out["waiting_reason"]["message"].startswith(
        "No live worker serves queue `q`; the last one (w1) was draining"
    )


@pytest.mark.parametrize("state", ["stale", "stuck"])
def test_stale_and_stuck_workers_still_count_as_live(state):
    # A stale heartbeat may be a slow network: its free slots still count (it gets the job).
    out = queued_reason(
        "q", Position(0), paused=False, serving=[worker("w1", state, slots=2)], rate_long=0, rate_short=0
    )
    assert out["waiting_reason"] == {
        "code": "next",
        "message": "Next in line; 2 free slot(s) on queue `q`.",
        "evidence": {},
    }


def test_all_slots_busy_with_the_next_free_slot_expected():
    serving = [
        worker("w1", slots=2, running=2),
        worker("w2", "stale", slots=1, running=1),
        worker("w3", "gone"),
    ]
    out = queued_reason("q", Position(4), paused=False, serving=serving, rate_long=0.5, rate_short=0.25)
    assert out["waiting_reason"] == {
        "code": "all_busy",
        "message": "All 3 slots on 2 worker(s) serving `q` are busy; position 4; next free slot expected in ~2.0s.",
        "evidence": {"slots": 3, "busy": 3, "workers": 2, "position": 4},
    }
    # 5 jobs must start (4 ahead + this one): 10 s at 0.5/s, 20 s at 0.25/s; the short window wins.
    assert (out["eta_seconds"], out["eta_range"]) == (20.0, [10.0, 20.0])


def test_all_busy_without_recent_starts_has_no_estimate():
    out = queued_reason(
        "q", Position(0), paused=False, serving=[worker("w1", slots=1, running=1)], rate_long=0, rate_short=0
    )
    assert out["waiting_reason"]["message"] == "All 1 slots on 1 worker(s) serving `q` are busy; position 0."
    assert (out["eta_seconds"], out["eta_range"]) == (None, None)


def test_behind_others_counts_the_higher_priority_jobs():
    serving = [worker("w1", slots=4, running=1)]
    out = queued_reason(
        "q", Position(7, higher=5), paused=False, serving=serving, rate_long=2.0, rate_short=4.0
    )
    assert out["waiting_reason"] == {
        "code": "behind_others",
        "message": "7 job(s) will start before it (5 of higher priority); ETA ~2.0s.",
        "evidence": {"position": 7, "higher_priority": 5, "slots": 4, "busy": 1},
    }
    assert (out["eta_seconds"], out["eta_range"]) == (2.0, [2.0, 4.0])


def test_behind_others_without_rate_but_a_free_slot_for_it():
    serving = [worker("w1", slots=8, running=1)]
    out = queued_reason("q", Position(2), paused=False, serving=serving, rate_long=0.0, rate_short=0.0)
    # 7 free slots > position 2: it starts as soon as the workers pull.
    assert (
        out["waiting_reason"]["message"] == "2 job(s) will start before it (0 of higher priority); ETA ~0.0s."
    )


def test_next_in_line():
    serving = [worker("w1", slots=3, running=1), worker("w2", slots=1)]
    out = queued_reason("q", Position(0), paused=False, serving=serving, rate_long=1.0, rate_short=0.0)
    assert out == {
        "queue_position": 0,
        "eta_seconds": 1.0,
        "eta_range": [1.0, 1.0],
        "waiting_reason": {
            "code": "next",
            "message": "Next in line; 3 free slot(s) on queue `q`.",
            "evidence": {},
        },
    }


def test_gone_from_the_stream_has_no_position():
    gone = Position(None, state="gone")
    out = queued_reason("q", gone, paused=False, serving=[worker("w1")], rate_long=1.0, rate_short=1.0)
    assert out["queue_position"] is None and out["eta_seconds"] is None
    assert code(out) == "next"


# ETA and its wording


@pytest.mark.parametrize(
    ("position", "rates", "free", "expected"),
    [
        (0, [1.0, 1.0], 0, (1.0, [1.0, 1.0])),
        (9, [2.0, 5.0], 0, (2.0, [2.0, 5.0])),  # 10 to start; the short window is the estimate
        (9, [5.0, 0.0], 0, (2.0, [2.0, 2.0])),  # no start in the short window: the long one only
        (2, [0.0, 0.0], 3, (0.0, [0.0, 0.0])),  # a free slot is waiting for it
        (3, [0.0, 0.0], 3, (None, None)),  # not enough free slots, no rate: unknown
        (0, [3.0, 3.0], 1, (0.3, [0.3, 0.3])),  # rounded to a tenth
    ],
)
def test_eta(position, rates, free, expected):
    assert eta(position, rates, free) == expected


@pytest.mark.parametrize(
    ("value", "text"), [(0.04, "0.0s"), (2.25, "2.2s"), (9.94, "9.9s"), (10.0, "10s"), (95.5, "96s")]
)
def test_seconds_text(value, text):
    assert seconds_text(value) == text


def test_a_blocked_job_names_each_open_parent_and_takes_the_slowest_eta():
    from taskyard_api.reasons import blocked_reason

    out = blocked_reason(
        [
            ("01A", "scan", "running", {}),
            ("01B", None, "queued", {"queue_position": 4, "eta_seconds": 12.0}),
        ]
    )
    reason = out["waiting_reason"]
    assert reason["code"] == "blocked"
    assert reason["message"] == "Waiting for 2 parent(s): scan (running), 01B (queued, position 4, ETA ~12s)."
    assert [p["status"] for p in reason["evidence"]["parents"]] == ["running", "queued"]
    assert out["eta_seconds"] is None  # a running parent has no ETA of its own
    both = blocked_reason(
        [("01A", "a", "queued", {"eta_seconds": 3.0}), ("01B", "b", "queued", {"eta_seconds": 9.5})]
    )
    assert both["eta_seconds"] == 9.5


def test_a_scheduled_job_says_when_and_how_long_until_then():
    from taskyard_api.reasons import duration_text, scheduled_reason

    out = scheduled_reason(run_at=1_800_000_180.0, now=1_800_000_000.0)
    assert out["code"] == "scheduled"
    assert out["message"] == "Scheduled for 2027-01-15T08:03:00Z (in 3 min); it is not queued before then."
    assert out["evidence"] == {"run_at": "2027-01-15T08:03:00Z", "seconds_left": 180.0}
    assert [duration_text(s) for s in (3.25, 42, 61, 7500, 3 * 86400 + 4 * 3600)] == [
        "3.2s",
        "42s",
        "1 min",
        "2 h 5 min",
        "3 d 4 h",
    ]
