"""Schedule fire times with an explicit clock: cron on a zone's wall clock across DST, intervals,
and what catch-up does with fire times missed while no api ran."""

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskyard_api.schedule_times import BadTiming, Timing, check_cron, plan, timing, wall_iso, zone

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, tz: ZoneInfo = UTC) -> float:  # type: ignore[assignment]
    return datetime(*parts, tzinfo=tz).timestamp()


def fires_by_clock(t: Timing, start: float, end: float, step_s: float) -> list[float]:
    """What the timer does, driven by a controllable clock: look every `step_s`, fire what is due."""
    fired: list[float] = []
    next_at = t.after(start)
    now = start
    while now < end and next_at is not None:
        now += step_s
        decided = plan(t, next_at, now, "latest", 10, grace_s=600)
        fired += decided.fire
        next_at = decided.next_at
    return fired


@pytest.mark.parametrize("day", [date(2027, 3, 28), date(2027, 10, 31)])
def test_a_0230_daily_schedule_in_berlin_fires_once_on_each_dst_day(day):
    t = timing("30 2 * * *", None, "Europe/Berlin", 0)
    start = at(day.year, day.month, day.day, tz=BERLIN) - 3 * 86400
    fired = fires_by_clock(t, start, start + 7 * 86400, step_s=300)
    per_day = Counter(datetime.fromtimestamp(f, BERLIN).date() for f in fired)
    assert set(per_day.values()) == {1}, per_day
    assert len(per_day) == 7 and day in per_day
    # Every fire is 02:30 local, except the day 02:30 does not exist: when the gap ends (03:00).
    expected = {d: "02:30" for d in per_day}
    if day.month == 3:
        expected[day] = "03:00"
    assert {d_of(f): datetime.fromtimestamp(f, BERLIN).strftime("%H:%M") for f in fired} == expected


def d_of(f: float) -> date:
    return datetime.fromtimestamp(f, BERLIN).date()


def test_the_repeated_0230_fires_the_first_time_only():
    t = timing("30 2 * * *", None, "Europe/Berlin", 0)
    [first, second] = t.upcoming(at(2027, 10, 30, 12), 2)
    assert wall_iso(first, BERLIN) == "2027-10-31T02:30:00+02:00"  # CEST, not the CET repeat
    assert wall_iso(second, BERLIN) == "2027-11-01T02:30:00+01:00"
    # Looking again from inside the repeated hour (02:40 CET, after the first 02:30): not again.
    assert t.after(at(2027, 10, 31, 1, 40)) == second


def test_next_fires_across_both_2027_transitions():
    t = timing("30 2 * * *", None, "Europe/Berlin", 0)
    assert [wall_iso(f, BERLIN) for f in t.upcoming(at(2027, 3, 27, 12), 2)] == [
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
    ]


def test_a_six_field_cron_has_seconds_first():
    t = timing("*/15 * * * * *", None, "UTC", 0)
    assert [f - at(2027, 1, 1) for f in t.upcoming(at(2027, 1, 1), 3)] == [15, 30, 45]


def test_intervals_count_from_their_anchor_to_the_millisecond():
    t = timing(None, 0.05, "UTC", 1000.0)
    assert t.upcoming(1000.0, 3) == [1000.05, 1000.1, 1000.15]
    assert t.after(1000.07) == 1000.1


@pytest.mark.parametrize(
    ("catch_up", "fired"),
    [("none", []), ("latest", [1003.0]), ("all", [1001.0, 1002.0, 1003.0])],
)
def test_catch_up_after_three_missed_periods(catch_up, fired):
    t = timing(None, 1.0, "UTC", 1000.0)
    # Last handled 1000; the api was away until 1003.6: 1001, 1002 and 1003 were missed.
    decided = plan(t, 1001.0, 1003.6, catch_up, 10, grace_s=1.0)
    assert decided.fire == fired
    assert decided.on_time is None
    assert decided.dropped == 3 - len(fired)
    assert decided.next_at == 1004.0


def test_catch_up_all_is_bounded_by_the_most_recent():
    t = timing(None, 1.0, "UTC", 1000.0)
    decided = plan(t, 1001.0, 1100.6, "all", 5, grace_s=1.0)
    assert decided.fire == [1096.0, 1097.0, 1098.0, 1099.0, 1100.0]
    assert decided.dropped == 95


def test_a_fire_late_by_a_little_is_on_time_whatever_the_policy():
    t = timing(None, 1.0, "UTC", 1000.0)
    decided = plan(t, 1001.0, 1001.2, "none", 10, grace_s=1.0)
    assert (decided.fire, decided.on_time, decided.dropped) == ([1001.0], 1001.0, 0)
    # Late by more than half its period: missed, even within the grace.
    assert plan(t, 1001.0, 1001.7, "none", 10, grace_s=1.0).fire == []


def test_cron_catch_up_walks_wall_clock_fire_times():
    t = timing("0 * * * *", None, "Europe/Berlin", 0)
    decided = plan(t, at(2027, 1, 1, 0), at(2027, 1, 1, 5, 30), "all", 3, grace_s=60)
    assert [wall_iso(f, BERLIN) for f in decided.fire] == [
        "2027-01-01T04:00:00+01:00",
        "2027-01-01T05:00:00+01:00",
        "2027-01-01T06:00:00+01:00",
    ]
    assert decided.dropped == 3


def test_nothing_due_keeps_the_next_fire_time():
    t = timing(None, 10.0, "UTC", 0.0)
    decided = plan(t, 20.0, 15.0, "all", 10, grace_s=1.0)
    assert (decided.fire, decided.next_at) == ([], 20.0)


@pytest.mark.parametrize("expr", ["bad", "61 * * * *", "* * * *", "* * * * * * *", "0 0 32 1 *"])
def test_invalid_cron_is_refused(expr):
    with pytest.raises(BadTiming, match="^cron: "):
        check_cron(expr)


def test_unknown_time_zone_is_refused():
    with pytest.raises(BadTiming, match="^timezone: unknown time zone"):
        zone("Mars/Olympus_Mons")


def test_never_matching_cron_has_no_next_fire():
    assert timing("0 0 31 2 *", None, "UTC", 0).after(at(2027, 1, 1)) is None


def test_clock_steps_do_not_change_what_fires():
    """Looking every second or every 10 minutes: the same fire times (on time or caught up)."""
    t = timing("*/5 * * * *", None, "UTC", 0)
    start = at(2027, 6, 1)
    fine = fires_by_clock(t, start, start + 3600, 1)
    assert len(fine) == 12 and fine == sorted(set(fine))
    assert fine[0] == start + timedelta(minutes=5).total_seconds()


def test_intervals_at_epoch_scale_lose_no_fire_time():
    """Epoch seconds divided by 0.05 are off by ~1e-5: no fire time may be skipped for it."""
    t = timing(None, 0.05, "UTC", 1796488373.004)
    walked = t.upcoming(t.anchor, 2000)
    assert walked == [t.nth(k) for k in range(1, 2001)]
    for k in range(1, 2000, 7):
        due = plan(t, t.nth(k), t.nth(k + 3) + 0.001, "all", 10, grace_s=1.0)
        assert due.fire == [t.nth(k), t.nth(k + 1), t.nth(k + 2), t.nth(k + 3)], k
