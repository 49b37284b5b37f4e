"""Concurrency and rate keys decided from plain values (key_rules, key_defaults, reasons)."""

import pytest

from taskyard_api.key_defaults import GateDefaults
from taskyard_api.key_rules import (
    Bucket,
    Unfilled,
    concurrency_gate,
    expand,
    gates_of,
    in_progress_to_stop,
    keep_latest,
    lock_order,
    order,
    round_robin,
)
from taskyard_api.lifecycle import JobRecord
from taskyard_api.reasons import throttled_reason

T0 = 1_800_000_000.0


def job(id: str, created: float = T0, priority: str = "normal", **fields) -> JobRecord:
    return JobRecord(
        id=id, owner_id="k", status="throttled", type="t", queue="default", priority=priority, payload=None,
        labels={}, timeout_s=60, max_attempts=1, backoff={}, idempotency_key=None,
        created_at=created, updated_at=created, **fields,
    )  # fmt: skip


def test_a_key_serves_priority_first_then_submit_time_then_id():
    jobs = [job("C", T0), job("B", T0), job("A", T0 + 1), job("L", T0 - 5, "low"), job("H", T0 + 9, "high")]
    assert [j.id for j in sorted(jobs, key=order)] == ["H", "B", "C", "A", "L"]


def test_round_robin_is_admitted_in_the_group_and_locks_go_in_one_order():
    rr = job(
        "1", concurrency_key="tenant:a", concurrency={"limit": 2, "strategy": "round_robin", "group": "g"}
    )
    plain = job("2", concurrency_key="tenant:a", concurrency={"limit": 2})
    both = job("3", concurrency_key="k", concurrency={"limit": 1}, rate_key="openai", rate={"per_s": 5})
    assert concurrency_gate(rr) == ("group", "g") and concurrency_gate(plain) == ("concurrency", "tenant:a")
    gates = gates_of([rr, plain, both])
    assert lock_order(gates) == [
        ("concurrency", "k"),
        ("concurrency", "tenant:a"),
        ("group", "g"),
        ("rate", "openai"),
    ]


def test_a_bucket_gives_burst_at_once_then_one_per_interval():
    bucket = Bucket(per_s=5, burst=2, tat=T0)
    first = bucket.take(T0, since=T0)
    assert first is not None
    second = first.take(T0, since=T0)
    assert second is not None and second.take(T0, since=T0) is None  # burst of 2 used
    assert second.next_at() == pytest.approx(T0 + 0.2)
    assert second.take(T0 + 0.19, since=T0) is None
    assert second.take(T0 + 0.2, since=T0) is not None
    assert Bucket(per_s=5, burst=2, tat=T0 + 0.4).tokens(T0) == 0.0
    assert Bucket(per_s=5, burst=2, tat=T0 - 10).tokens(T0) == 2.0


def test_a_late_timer_does_not_slow_a_rate_down():
    """20/s with a timer that always fires 7 ms late still admits 200 jobs in 10 s."""
    bucket, now, admitted = Bucket(per_s=20, burst=1, tat=T0), T0, 0
    while now < T0 + 10:
        taken = bucket.take(now, since=T0 - 1)  # a long line of jobs waiting since before
        if taken is not None:
            bucket, admitted = taken, admitted + 1
        else:
            now = bucket.next_at() + 0.007
    assert admitted in (200, 201)


def test_a_fire_later_than_one_interval_releases_one_job_and_restarts_the_schedule():
    """No burst beyond `burst`: four tokens' worth of lateness (a stall, an outage) is not made up."""
    for late in (T0 + 0.2, T0 + 3600):
        bucket, got = Bucket(per_s=20, burst=1, tat=T0), 0
        while (taken := bucket.take(late, since=T0 - 1)) is not None:
            bucket, got = taken, got + 1
        assert got == 1
        assert bucket.next_at() == pytest.approx(late + 0.05)


def test_releases_are_never_closer_than_an_interval_less_the_lateness_they_absorb():
    """A timer late by up to one interval: 11 consecutive releases at 10/s span at least 0.9 s."""
    import random

    rng = random.Random(7)
    bucket, released = Bucket(per_s=10, burst=1, tat=T0), []
    while len(released) < 50:
        now = bucket.next_at() + rng.uniform(0, 0.099)
        taken = bucket.take(now, since=T0 - 1)
        assert taken is not None
        bucket = taken
        released.append(now)
        assert bucket.take(now, since=T0 - 1) is None  # never two at once
    assert all(b - a >= 0.9 for a, b in zip(released, released[10:], strict=False))


def test_a_fresh_job_on_an_idle_bucket_is_charged_from_now():
    bucket = Bucket(per_s=1, burst=1, tat=T0 - 100)
    taken = bucket.take(T0, since=T0)
    assert taken is not None and taken.tat == T0 + 1 and taken.take(T0 + 0.5, since=T0) is None


def test_round_robin_takes_one_job_of_each_key_per_round_least_recently_served_first():
    a = [job(f"A{i}", T0 + i) for i in range(4)]
    b = [job(f"B{i}", T0 + 100 + i) for i in range(2)]
    # A was served at turn 7, B never: B first, then they alternate while both have jobs.
    assert [j.id for j in round_robin({"A": a, "B": b}, {"A": 7})] == ["B0", "A0", "B1", "A1", "A2", "A3"]
    assert [j.id for j in round_robin({"A": a, "B": b}, {"A": 3, "B": 5})][:2] == ["A0", "B0"]
    assert round_robin({}, {}) == []


def test_keep_latest_keeps_the_newest_and_cancel_in_progress_keeps_the_newest_limit():
    waiting = [job("1", T0), job("3", T0 + 2), job("2", T0 + 1)]
    newest, rest = keep_latest(waiting)
    assert newest is not None and newest.id == "3" and {j.id for j in rest} == {"1", "2"}
    assert keep_latest([]) == (None, [])
    holding = [job("h1", T0 - 10), job("h2", T0 - 5)]
    stop, replaced = in_progress_to_stop(holding, [job("n1", T0)], limit=2)
    assert [j.id for j in stop] == ["h1"] and replaced == []
    stop, replaced = in_progress_to_stop(holding, [job("n1", T0), job("n2", T0 + 1), job("n3", T0 + 2)], 2)
    assert {j.id for j in stop} == {"h1", "h2"} and [j.id for j in replaced] == ["n1"]


def test_a_key_template_is_filled_from_the_jobs_fields():
    fields = {
        "type": "llm.call",
        "queue": "ai",
        "labels": {"tenant": "acme"},
        "payload": {"model": "x", "n": 3},
    }
    assert expand("tenant:{labels.tenant}", fields) == "tenant:acme"
    assert expand("{type}/{payload.model}/{payload.n}", fields) == "llm.call/x/3"
    assert expand("fixed", fields) == "fixed"
    for missing in ("{labels.region}", "{payload}", "{nope}"):
        with pytest.raises(Unfilled):
            expand(missing, fields)


def test_defaults_per_type_then_queue_with_a_limit_per_key_and_the_jobs_own_spec_wins():
    defaults = GateDefaults.model_validate(
        {
            "types": {"llm.call": {"concurrency": {"key": "tenant:{labels.tenant}", "limit": 1,
                                                   "limits": {"tenant:premium": 10}}}},
            "queues": {"ai": {"concurrency": {"key": "queue:ai", "limit": 4},
                              "rate": {"key": "openai", "per_s": 5, "burst": 2}}},
        }
    )  # fmt: skip
    base = {"type": "llm.call", "queue": "ai", "labels": {"tenant": "premium"}, "payload": None}
    filled = defaults.fill(base)
    assert filled["concurrency_key"] == "tenant:premium" and filled["concurrency"]["limit"] == 10
    assert filled["rate_key"] == "openai" and filled["rate"] == {"per_s": 5, "burst": 2}
    assert defaults.fill({**base, "labels": {"tenant": "small"}})["concurrency"]["limit"] == 1
    # The job's own key wins; a template it cannot fill gives no key (not the queue's either).
    assert "concurrency_key" not in defaults.fill({**base, "concurrency_key": "mine"})
    assert "concurrency_key" not in defaults.fill({**base, "labels": {}})
    assert defaults.fill({**base, "type": "other"})["concurrency_key"] == "queue:ai"


def test_the_throttled_reason_names_the_key_the_count_and_the_position():
    full = {"key": "tenant:acme", "group": None, "limit": 2, "holding": 2, "ahead": 3, "strategy": "queue"}
    out = throttled_reason({"concurrency": full}, T0)
    assert (
        out["waiting_reason"]["message"] == "2/2 running for key `tenant:acme`; 3 ahead of you for this key."
    )
    assert out["waiting_reason"]["evidence"] == {
        "key": "tenant:acme", "limit": 2, "holding": 2, "ahead": 3, "group": None, "kind": "concurrency"
    }  # fmt: skip
    grouped = throttled_reason({"concurrency": {**full, "group": "tenants"}}, T0)["waiting_reason"]["message"]
    assert grouped.startswith("2/2 running for group `tenants` (key `tenant:acme`)")
    rate = {"key": "openai", "per_s": 5.0, "burst": 1, "next_at": T0 + 0.4, "ahead": 2}
    out = throttled_reason({"concurrency": {**full, "holding": 1}, "rate": rate}, T0)
    assert (
        out["waiting_reason"]["message"]
        == "rate `openai` 5/s; next release in 0.4 s; 2 ahead of you for this key."
    )
    assert out["eta_seconds"] == 0.8
    slow = throttled_reason({"rate": {**rate, "per_s": 0.5}}, T0)["waiting_reason"]["message"]
    assert slow.startswith("rate `openai` 30/min;")
    assert throttled_reason({}, T0)["waiting_reason"]["code"] == "throttled"
